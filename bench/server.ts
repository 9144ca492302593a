/**
 * `smolvm serve` overhead, side by side in one run on one VM (the python image, created through MCP so every path
 * may use it):
 *   - `true` round trip: the SDK directly, REST (JSON answer), MCP (`run_command` over Streamable HTTP), the stock
 *     E2B SDK (`commands.run`, which E2B runs as `bash -l -c`: compared with the SDK running the same `bash -l -c true`);
 *   - create to first command: SDK, REST, E2B SDK (python image, warm start), deleted after each;
 *   - requests per second of short commands with 16 clients: SDK and REST.
 *   node dist/bench/server.js [--runs 30] [--creates 5] [--seconds 10] [--no-write]
 * Prints JSON; writes its section of docs/BENCHMARKS.md unless --no-write.
 */
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SmolVM } from "../src/index.js";
import { packageRoot } from "../src/paths.js";
import { serve } from "../test/support/serve.js";
import { machine, type Stats, stats, writeSection } from "./stats.js";

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const RUNS = arg("runs", 30);
const CREATES = arg("creates", 5);
const SECONDS = arg("seconds", 10);
const now = () => performance.now();

const s = await serve(["--log-level", "error"]);
process.env.E2B_API_URL = s.url;
process.env.E2B_SANDBOX_URL = s.url;
process.env.E2B_API_KEY = s.token;
const { Sandbox } = await import("e2b");

const mcp = new Client({ name: "smolvm-bench", version: "1" });
await mcp.connect(
  new StreamableHTTPClientTransport(new URL(`${s.url}/mcp`), {
    requestInit: { headers: { authorization: `Bearer ${s.token}` } },
  }),
);

async function mcpCall(name: string, args: Record<string, unknown>): Promise<Record<string, unknown>> {
  const r = await mcp.callTool({ name, arguments: args });
  if (r.isError) throw new Error(`${name}: ${JSON.stringify(r.content)}`);
  return r.structuredContent as Record<string, unknown>;
}

const created = await mcpCall("create_sandbox", { image: "python", lifetime_seconds: 3600 });
const id = String(created.sandbox_id);
const vm = await SmolVM.fromId(id);
const e2b = await Sandbox.connect(id);

const restRun = async (cmd: string | string[]) => {
  const r = await s.api(`/v1/sandboxes/${id}/commands`, { method: "POST", json: { cmd } });
  const j = (await r.json()) as { exitCode: number };
  if (j.exitCode !== 0) throw new Error(`REST run failed: ${JSON.stringify(j)}`);
};

const paths: Record<string, () => Promise<unknown>> = {
  sdk: () => vm.run(["true"]),
  rest: () => restRun(["true"]),
  mcp: () => mcpCall("run_command", { sandbox_id: id, command: "true" }),
  sdkBash: () => vm.run(["bash", "-l", "-c", "true"]),
  e2b: () => e2b.commands.run("true"),
};

const result: Record<string, unknown> = { date: new Date().toISOString(), machine: machine(), accel: vm.info().accel };
try {
  for (const f of Object.values(paths)) await f(); // warm: first use of each path
  const samples: Record<string, number[]> = Object.fromEntries(Object.keys(paths).map((k) => [k, []]));
  for (let i = 0; i < RUNS; i++) {
    for (const [k, f] of Object.entries(paths)) {
      const t = now();
      await f();
      samples[k]?.push(now() - t);
    }
  }
  const runMs = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, stats(v)])) as Record<string, Stats>;
  result.runMs = runMs;
  const p50 = (k: string) => (runMs[k] as Stats).p50;
  result.overheadMs = {
    rest: Math.round((p50("rest") - p50("sdk")) * 100) / 100,
    mcp: Math.round((p50("mcp") - p50("sdk")) * 100) / 100,
    e2bOverSdkBash: Math.round((p50("e2b") - p50("sdkBash")) * 100) / 100,
  };

  process.stderr.write("round trips done; create to first command\n");
  const creates: Record<string, () => Promise<void>> = {
    sdk: async () => {
      const v = await SmolVM.create({ image: "python", keep: false });
      await v.run(["true"]);
      await v.delete();
    },
    rest: async () => {
      const r = await s.api("/v1/sandboxes", { method: "POST", json: { image: "python" } });
      const { vmId } = (await r.json()) as { vmId: string };
      await s.api(`/v1/sandboxes/${vmId}/commands`, { method: "POST", json: { cmd: ["true"] } });
      await s.api(`/v1/sandboxes/${vmId}`, { method: "DELETE" });
    },
    e2b: async () => {
      const sbx = await Sandbox.create();
      await sbx.commands.run("true");
      await sbx.kill();
    },
  };
  const createSamples: Record<string, number[]> = { sdk: [], rest: [], e2b: [] };
  for (let i = 0; i < CREATES; i++) {
    for (const [k, f] of Object.entries(creates)) {
      const t = now();
      await f();
      createSamples[k]?.push(now() - t);
    }
  }
  result.createToFirstCommandMs = Object.fromEntries(Object.entries(createSamples).map(([k, v]) => [k, stats(v)]));

  process.stderr.write(`creates done; requests per second; vm ${vm.status} ${vm.info().error}\n`);
  const rps = async (f: () => Promise<unknown>) => {
    let n = 0;
    const end = now() + SECONDS * 1000;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (now() < end) {
          await f();
          n++;
        }
      }),
    );
    return Math.round(n / SECONDS);
  };
  result.requestsPerSecond16 = {
    sdk: await rps(paths.sdk as () => Promise<unknown>),
    rest: await rps(paths.rest as () => Promise<unknown>),
  };
} catch (e) {
  process.stderr.write(`bench failed: ${(e as Error).message}; the VM is ${vm.status}: ${vm.info().error}\n`);
  if (process.env.SMOLVM_BENCH_DEBUG) {
    const { execFileSync } = await import("node:child_process");
    const cli = join(packageRoot(), "bin", "smolvm.js");
    process.stderr.write(execFileSync(process.execPath, [cli, "status", id, "--json"], { encoding: "utf8" }));
    process.stderr.write(execFileSync(process.execPath, [cli, "logs", id, "-n", "40"], { encoding: "utf8" }));
  }
  throw e;
} finally {
  await mcp.close(); // the MCP session ends: its sandbox is deleted
  vm.close();
  await s.stop();
}

process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
if (!process.argv.includes("--no-write")) {
  const ms = result.runMs as Record<string, Stats>;
  const cr = result.createToFirstCommandMs as Record<string, Stats>;
  const o = result.overheadMs as Record<string, number>;
  const rp = result.requestsPerSecond16 as Record<string, number>;
  const row = (label: string, st: Stats) => `| ${label} | ${st.p50.toFixed(2)} | ${st.p95.toFixed(2)} | ${st.n} |`;
  const body = `## Server: REST, MCP, E2B SDK (\`node dist/bench/server.js\`)

${String(result.date).slice(0, 10)} on ${result.machine}; accelerator **${result.accel}**; one python-image VM, every
path on the same VM, rounds interleaved; the server on loopback.

Round trip of \`true\`, ms:

| path | p50 | p95 | n |
| --- | ---: | ---: | ---: |
${row('SDK `vm.run(["true"])`', ms.sdk as Stats)}
${row("REST `POST /v1/sandboxes/{id}/commands` (JSON answer)", ms.rest as Stats)}
${row("MCP `run_command` (Streamable HTTP, official SDK client)", ms.mcp as Stats)}
${row('SDK `vm.run(["bash","-l","-c","true"])`', ms.sdkBash as Stats)}
${row('stock E2B SDK `commands.run("true")` (runs `bash -l -c`)', ms.e2b as Stats)}

Overhead at p50 over the SDK: REST **+${o.rest} ms**, MCP **+${o.mcp} ms**, E2B SDK **+${o.e2bOverSdkBash} ms** (over the
SDK running the same \`bash -l -c true\`).

Create (python image, warm start), run a first command, delete: the whole cycle, ms. The E2B SDK's command runs
through \`bash -l -c\`, which alone costs about 140 ms more here (first table):

| path | p50 | p95 | n |
| --- | ---: | ---: | ---: |
${row("SDK `SmolVM.create` + `run`", cr.sdk as Stats)}
${row("REST `POST /v1/sandboxes` + command", cr.rest as Stats)}
${row("stock E2B SDK `Sandbox.create()` + `commands.run`", cr.e2b as Stats)}

Short commands (\`true\`) with 16 clients in flight for ${SECONDS} s: SDK **${rp.sdk}/s**, REST **${rp.rest}/s**.`;
  writeSection(join(packageRoot(), "docs", "BENCHMARKS.md"), "server", body);
}
