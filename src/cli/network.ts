/** port expose|list|close, network show|set */
import type { Command } from "commander";
import { SmolVM } from "../sandbox/smolvm.js";
import { internetFrom } from "./lifecycle.js";
import { int, printJson, table } from "./output.js";

export function registerNetwork(program: Command): void {
  const port = program.command("port").description("expose guest TCP ports on the host (works in every network mode)");
  port
    .command("expose <id> <guestPort>")
    .description("listen on the host and forward each connection to the guest's 127.0.0.1:guestPort")
    .option("--host-port <port>", "host port (default: a free one)")
    .option("--host <addr>", "host address to listen on (default 127.0.0.1)")
    .option("--json", "print JSON")
    .action(async (id: string, guestPort: string, o: { hostPort?: string; host?: string; json?: boolean }) => {
      const vm = await SmolVM.fromId(id);
      const p = await vm.expose(int("guestPort", guestPort, { min: 1, max: 65535 }), {
        hostPort: int("hostPort", o.hostPort, { min: 0, max: 65535 }),
        host: o.host,
      });
      if (o.json) printJson(p);
      else process.stdout.write(`${p.url}\n`);
      vm.close();
    });
  port
    .command("list <id>")
    .alias("ls")
    .description("list a VM's exposed ports")
    .option("--json", "print JSON")
    .action(async (id: string, o: { json?: boolean }) => {
      const vm = await SmolVM.fromId(id);
      const ports = vm.ports();
      if (o.json) printJson(ports);
      else
        process.stdout.write(
          `${table(ports as unknown as Record<string, unknown>[], ["guestPort", "host", "port", "url"])}\n`,
        );
      vm.close();
    });
  port
    .command("close <id> [guestPort]")
    .description("close a VM's exposed ports (all, or those of one guest port)")
    .option("--host-port <port>", "only the listener on this host port")
    .option("--json", "print JSON")
    .action(async (id: string, guestPort: string | undefined, o: { hostPort?: string; json?: boolean }) => {
      const vm = await SmolVM.fromId(id);
      const closed = await vm.unexpose({
        guestPort: int("guestPort", guestPort, { min: 1, max: 65535 }),
        hostPort: int("hostPort", o.hostPort, { min: 1, max: 65535 }),
      });
      if (o.json) printJson(closed);
      else for (const p of closed) process.stdout.write(`closed ${p.url}\n`);
      vm.close();
    });

  const net = program.command("network").alias("net").description("a VM's network");
  net
    .command("show <id>")
    .description("mode, addresses, resolver and egress policy")
    .option("--json", "print JSON")
    .action(async (id: string, o: { json?: boolean }) => {
      const vm = await SmolVM.fromId(id);
      const n = vm.networkConfig;
      if (o.json) printJson(n);
      else
        for (const [k, v] of Object.entries(n))
          process.stdout.write(`${k.padEnd(11)} ${typeof v === "object" ? JSON.stringify(v) : (v ?? "-")}\n`);
      vm.close();
    });
  net
    .command("set <id>")
    .description("change a running VM's egress policy")
    .option("--internet <policy>", "open | off")
    .option("--allow-cidr <cidr...>", "allow only these IPv4 CIDRs")
    .option("--allow-domain <name...>", "allow only these names (tap mode)")
    .option("--json", "print JSON")
    .action(
      async (id: string, o: { internet?: string; allowCidr?: string[]; allowDomain?: string[]; json?: boolean }) => {
        const policy = internetFrom(o);
        if (policy === undefined) throw new Error("give --internet, --allow-cidr or --allow-domain");
        const vm = await SmolVM.fromId(id);
        const n = await vm.setInternet(policy);
        if (o.json) printJson(n);
        else
          process.stdout.write(
            `internet ${typeof n.internet === "string" ? n.internet : JSON.stringify(n.internet)}\n`,
          );
        vm.close();
      },
    );
}
