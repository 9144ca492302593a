/**
 * Browser sandboxes, side by side in one run (the `browser` image):
 *   - ready: `create()` + `browser.start()` until Playwright (connectOverCDP) has a page, from the warm template
 *     (a live browser is adopted) and cold (the VM boots, Chromium is launched); and the same run's bare cold VM boot
 *     of the image (`create()` with coldBoot to the first command), the baseline the issue's goal is stated against;
 *   - PSS of an idle browser VM on the host (QEMU and its helpers; two VMs of one template, so shared pages count
 *     half each);
 *   - a simple page (data: URL) opened and screenshotted through Playwright: the VM's Chromium against a Chromium
 *     started on the host (Debian's /usr/bin/chromium) in the same run: the cost of the isolation.
 *   node dist/bench/browser.js [--rounds 3] [--runs 10] [--no-write]
 * Prints JSON; writes its section of docs/BENCHMARKS.md unless --no-write.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { type Browser, chromium } from "playwright-core";
import { SmolVM } from "../src/index.js";
import { packageRoot } from "../src/paths.js";
import { machine, type Stats, stats, writeSection } from "./stats.js";

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const ROUNDS = arg("rounds", 3);
const RUNS = arg("runs", 10);
const now = () => performance.now();
const log = (m: string) => process.stderr.write(`${m}\n`);

/** Until Playwright, connected over CDP, has a page it can drive. */
async function pageReady(cdpUrl: string): Promise<void> {
  const b = await chromium.connectOverCDP(cdpUrl);
  try {
    const ctx = b.contexts()[0];
    const page = ctx?.pages()[0] ?? (await ctx?.newPage());
    if (!page || (await page.evaluate("1 + 1")) !== 2) throw new Error("no page");
  } finally {
    await b.close();
  }
}

async function ready(coldBoot: boolean): Promise<number> {
  const t = now();
  const vm = await SmolVM.create({ image: "browser", coldBoot });
  try {
    const info = await vm.browser.start();
    await pageReady(info.cdpUrl as string);
    return now() - t;
  } finally {
    await vm.delete();
  }
}

async function coldVmBoot(): Promise<number> {
  const t = now();
  const vm = await SmolVM.create({ image: "browser", coldBoot: true });
  try {
    await vm.run(["true"]);
    return now() - t;
  } finally {
    await vm.delete();
  }
}

const pssKiB = (pid: string) =>
  Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"))?.[1]) || 0;
/** PSS of every live host process whose command line names the VM (QEMU, its supervisor, the proxy, forwarders). */
function hostPssMiB(vmId: string): number {
  let kib = 0;
  for (const p of readdirSync("/proc").filter((x) => /^\d+$/.test(x))) {
    try {
      if (readFileSync(`/proc/${p}/cmdline`, "utf8").includes(vmId)) kib += pssKiB(p);
    } catch {}
  }
  return kib / 1024;
}

const PAGE =
  "data:text/html,<title>bench</title><body style='font:16px sans-serif'><h1>A simple page</h1>" +
  "<p>Some text, a list and a table.</p><ul><li>one</li><li>two</li></ul><table><tr><td>a</td><td>b</td></tr></table>";

async function navShot(b: Browser): Promise<number[]> {
  const ctx = b.contexts()[0] ?? (await b.newContext());
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  await page.goto(PAGE); // first one not counted: both browsers start from a page that has run
  await page.screenshot();
  const out: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const t = now();
    await page.goto(`${PAGE}<p>${i}</p>`);
    await page.screenshot();
    out.push(now() - t);
  }
  return out;
}

const result: Record<string, unknown> = { date: new Date().toISOString(), machine: machine() };
const samples: Record<string, number[]> = { warm: [], cold: [], coldVmBoot: [] };
// one warm create first: builds the template if it is missing (not counted)
await ready(false);
for (let r = 0; r < ROUNDS; r++) {
  log(`round ${r + 1}/${ROUNDS}`);
  samples.warm?.push(await ready(false));
  samples.cold?.push(await ready(true));
  samples.coldVmBoot?.push(await coldVmBoot());
}
const st = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, stats(v)])) as Record<string, Stats>;
result.readyMs = st;
const p50 = (k: string) => st[k]?.p50 as number;
result.ratios = {
  warmToColdLaunch: Math.round((p50("warm") / p50("cold")) * 100) / 100,
  warmToColdVmBoot: Math.round((p50("warm") / p50("coldVmBoot")) * 100) / 100,
};

log("PSS of idle browser VMs");
const vms = [await SmolVM.create({ image: "browser" }), await SmolVM.create({ image: "browser" })];
try {
  const infos = [];
  for (const vm of vms) infos.push(await vm.browser.start());
  await new Promise((r) => setTimeout(r, 20_000)); // idle
  result.pssPerIdleBrowserVmMiB = vms.map((vm) => Math.round(hostPssMiB(vm.vmId)));
  result.accel = vms[0]?.info().accel;

  log("navigation + screenshot: in the VM, then on the host");
  const inVm = await chromium.connectOverCDP(infos[0]?.cdpUrl as string);
  let vmNav: number[];
  try {
    vmNav = await navShot(inVm);
  } finally {
    await inVm.close();
  }
  const nav: Record<string, Stats> = { vm: stats(vmNav) };
  const hostBin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));
  if (hostBin) {
    const host = await chromium.launch({ executablePath: hostBin, args: ["--no-sandbox"] });
    try {
      nav.host = stats(await navShot(host));
    } finally {
      await host.close();
    }
    result.navScreenshotVmToHost = Math.round(((nav.vm?.p50 as number) / (nav.host?.p50 as number)) * 10) / 10;
  } else result.hostChromium = "not installed (apt-get install chromium): no host comparison";
  result.navScreenshotMs = nav;
} finally {
  for (const vm of vms) await vm.delete();
}

console.log(JSON.stringify(result, null, 2));
if (!process.argv.includes("--no-write")) {
  const f = (s: Stats | undefined) => (s ? `${Math.round(s.p50)} / ${Math.round(s.p95)}` : "-");
  const nav = result.navScreenshotMs as Record<string, Stats>;
  const ratios = result.ratios as Record<string, number>;
  const body = `## Browser sandboxes (\`node dist/bench/browser.js\`)

${result.date}, ${result.machine}, accel ${result.accel}. ${ROUNDS} rounds, interleaved; p50 / p95 in ms.

| ready: create + \`browser.start()\` until Playwright has a page | p50 / p95 |
| --- | --- |
| warm template (a live Chromium adopted) | ${f(st.warm)} |
| cold (VM boots, Chromium launches) | ${f(st.cold)} |
| bare cold VM boot of the image, to its first command (baseline) | ${f(st.coldVmBoot)} |

Warm is **${ratios.warmToColdLaunch} x** the cold launch and **${ratios.warmToColdVmBoot} x** the bare cold VM boot of
the same run.

| idle browser VM | |
| --- | --- |
| PSS on the host (QEMU and helpers), two VMs of one template | ${(result.pssPerIdleBrowserVmMiB as number[]).join(" MiB, ")} MiB |

| simple page: \`goto\` + \`screenshot\` (Playwright), ${RUNS} runs | p50 / p95 |
| --- | --- |
| Chromium in the VM (over CDP through the exposed port) | ${f(nav.vm)} |
| Chromium on the host (${result.hostChromium ? "not installed" : "Debian's, headless"}) | ${f(nav.host)} |

${result.navScreenshotVmToHost ? `The VM's browser takes **${result.navScreenshotVmToHost} x** the host's: the cost of the isolation here, under ${result.accel}.` : ""}
`;
  writeSection(join(packageRoot(), "docs", "BENCHMARKS.md"), "browser", body);
}
