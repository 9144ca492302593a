/**
 * TAP devices for Firecracker. QEMU is handed an open TAP descriptor by its launcher (a TAP that goes when the VMM
 * ends); Firecracker only takes a device name and attaches to it itself, so its TAP must exist, be persistent and
 * be free when Firecracker starts, and SmolVM removes it when the VM ends. The host side is set up as the launcher
 * does for QEMU (src/network/tap.ts): the gateway's MAC and address, one permanent neighbour (the guest), IPv6 off,
 * IPv4 forwarding on.
 */
import { existsSync, writeFileSync } from "node:fs";
import { SmolVMError } from "../../errors.js";
import { mustRun, runHost, which } from "../../util/run.js";
import type { TapSetup } from "../types.js";

function ip(): string {
  const bin = which("ip");
  if (!bin) throw new SmolVMError("ip not found: install the iproute2 package");
  return bin;
}

/** Create TAP `name` (it must not exist), owned by `owner` when given, and set it up as `setup` says. */
export async function createPersistentTap(
  name: string,
  owner: { uid: number; gid: number } | null,
  setup: TapSetup | null,
): Promise<void> {
  if (existsSync(`/sys/class/net/${name}`)) throw new SmolVMError(`TAP ${name} already exists`);
  const bin = ip();
  await mustRun(bin, [
    "tuntap",
    "add",
    "dev",
    name,
    "mode",
    "tap",
    "vnet_hdr",
    ...(owner ? ["user", String(owner.uid), "group", String(owner.gid)] : []),
  ]);
  try {
    if (setup) {
      writeFileSync(`/proc/sys/net/ipv6/conf/${name}/disable_ipv6`, "1");
      writeFileSync(`/proc/sys/net/ipv4/conf/${name}/forwarding`, "1");
      await mustRun(bin, ["link", "set", "dev", name, "address", setup.mac]);
      await mustRun(bin, ["addr", "add", setup.address, "dev", name]);
      await mustRun(bin, ["link", "set", "dev", name, "up"]);
      await mustRun(bin, [
        ...["neigh", "replace", setup.neighbor.ip, "lladdr", setup.neighbor.mac],
        ...["dev", name, "nud", "permanent"],
      ]);
    }
  } catch (e) {
    await removeTap(name);
    throw e;
  }
}

/** Remove a TAP made by createPersistentTap; nothing if it is gone already. */
export async function removeTap(name: string): Promise<void> {
  if (!existsSync(`/sys/class/net/${name}`)) return;
  await runHost(ip(), ["link", "del", "dev", name]);
}
