/** create, list, status, logs, stop, rm */
import type { Command } from "commander";
import {
  type BackendName,
  type DiskMode,
  type InternetPolicy,
  LIFETIME_MS,
  LIMITS,
  type NetworkMode,
  resolveConfig,
  TIMEOUT_ACTIONS,
  type TimeoutAction,
  type VMConfig,
} from "../config.js";
import { ConfigError, howToRun, SmolVMError, VMStateError } from "../errors.js";
import { SmolVM, type VMInfo } from "../sandbox/smolvm.js";
import { formatDuration, parseDuration } from "./duration.js";
import { int, parsePairs, printJson, progress, table } from "./output.js";

export interface VmOptions {
  name?: string;
  mem?: string;
  cpus?: string;
  backend?: string;
  diskMode?: string;
  rootfs?: string;
  image?: string;
  diskSize?: string;
  coldBoot?: boolean;
  env?: string[];
  label?: string[];
  json?: boolean;
  net?: string;
  internet?: string;
  allowCidr?: string[];
  allowDomain?: string[];
}

/** Options shared by `create` and `run`. */
export function addVmOptions(cmd: Command): Command {
  return cmd
    .option("--mem <mib>", "guest memory in MiB (128-16384, default 512)")
    .option("--cpus <n>", "virtual CPUs (1-32, default 2)")
    .option("--backend <name>", "auto | firecracker | qemu")
    .option("--disk-mode <mode>", "isolated (default) | shared (writes --rootfs in place)")
    .option("--image <image>", "preset (base, python, node), OCI reference (python:3.12-slim) or image id")
    .option("--disk-size <mib>", "size of the guest's root file system in MiB (default: the image's)")
    .option("--rootfs <file>", "ext4 root file system image (default: the built-in one)")
    .option("--cold-boot", "boot the kernel instead of restoring the warm-start snapshot")
    .option("-e, --env <KEY=VALUE...>", "environment for every command")
    .option("-l, --label <KEY=VALUE...>", "labels (shown by list and status; list --filter label=KEY=VALUE)")
    .option("--net <mode>", "none (default) | user (passt, no privileges) | tap (root)")
    .option("--internet <policy>", "open (default with --net) | off")
    .option("--allow-cidr <cidr...>", "allow only these IPv4 CIDRs (and --allow-domain names)")
    .option("--allow-domain <name...>", "allow only these names (name or *.name; tap mode)");
}

/** `network` from the CLI's flags (undefined: the default, none). */
export function networkFrom(o: Pick<VmOptions, "net" | "internet" | "allowCidr" | "allowDomain">): VMConfig["network"] {
  const internet = internetFrom(o);
  if (o.net === undefined && internet === undefined) return undefined;
  return { mode: (o.net ?? "user") as NetworkMode, ...(internet !== undefined ? { internet } : {}) };
}

export function internetFrom(o: Pick<VmOptions, "internet" | "allowCidr" | "allowDomain">): InternetPolicy | undefined {
  const allow = o.allowCidr?.length || o.allowDomain?.length;
  if (allow && o.internet !== undefined) {
    throw new ConfigError("--internet", "give either --internet or --allow-cidr/--allow-domain, not both");
  }
  if (allow) return { allowCidrs: o.allowCidr ?? [], allowDomains: o.allowDomain ?? [] };
  return o.internet as InternetPolicy | undefined;
}

/** Config fields as the CLI's flags name them, for errors from validating the config the flags made. */
const FLAG_OF: Record<string, string> = {
  name: "--name",
  memSizeMib: "--mem",
  vcpuCount: "--cpus",
  backend: "--backend",
  diskMode: "--disk-mode",
  rootfsPath: "--rootfs",
  image: "--image",
  diskSizeMib: "--disk-size",
  env: "--env",
  labels: "--label",
  network: "--net",
  timeoutMs: "--timeout",
  onTimeout: "--on-timeout",
};

/** Flag combinations no VM can have: an error naming both flags, before anything starts. */
function flagConflicts(o: VmOptions): void {
  const both = (a: string, b: string, why: string) => new ConfigError(a, `cannot be combined with ${b}: ${why}`);
  if (o.image !== undefined && o.rootfs !== undefined) {
    throw both("--image", "--rootfs", "give the image to run, or your own root file system, not both");
  }
  if (o.diskSize !== undefined && o.rootfs !== undefined) {
    throw both("--disk-size", "--rootfs", "grow your own root file system file with resize2fs");
  }
  if (o.diskSize !== undefined && o.diskMode === "shared") {
    throw both("--disk-size", "--disk-mode shared", "an image written in place is not resized");
  }
  if (o.net === "none" && (o.internet !== undefined || o.allowCidr?.length || o.allowDomain?.length)) {
    throw both("--net none", o.internet !== undefined ? "--internet" : "--allow-cidr/--allow-domain", "no network");
  }
}

/**
 * The VMConfig the flags give, validated here, before anything starts: a bad value or a conflicting combination is
 * a ConfigError naming the flags (not the config fields).
 */
export function vmConfigFrom(o: VmOptions, extra: VMConfig = {}): VMConfig {
  flagConflicts(o);
  const c = { ...rawConfigFrom(o), ...extra };
  try {
    resolveConfig(c);
  } catch (e) {
    if (!(e instanceof ConfigError) || !FLAG_OF[e.field]) throw e;
    const msg = e.message
      .slice(e.field.length + 2)
      .replace(/\b(rootfsPath|diskSizeMib|diskMode)\b/g, (f) => FLAG_OF[f] ?? f);
    throw new ConfigError(FLAG_OF[e.field] as string, msg);
  }
  return c;
}

function rawConfigFrom(o: VmOptions): VMConfig {
  return {
    name: o.name,
    memSizeMib: int("--mem", o.mem, { min: LIMITS.memSizeMib[0], max: LIMITS.memSizeMib[1], unit: "MiB" }),
    vcpuCount: int("--cpus", o.cpus, { min: LIMITS.vcpuCount[0], max: LIMITS.vcpuCount[1] }),
    backend: o.backend as BackendName | undefined,
    diskMode: o.diskMode as DiskMode | undefined,
    rootfsPath: o.rootfs,
    image: o.image,
    diskSizeMib: int("--disk-size", o.diskSize, {
      min: LIMITS.diskSizeMib[0],
      max: LIMITS.diskSizeMib[1],
      unit: "MiB",
    }),
    coldBoot: o.coldBoot,
    env: parsePairs(o.env, "--env"),
    labels: parsePairs(o.label, "--label"),
    network: networkFrom(o),
  };
}

function describeNetwork(n: SmolVM["networkConfig"]): string {
  if (n.mode === "none") return "none";
  const policy =
    typeof n.internet === "string"
      ? n.internet
      : `allow ${[...n.internet.allowCidrs, ...n.internet.allowDomains].join(", ") || "nothing"}`;
  const addr = n.guestIp ? ` ${n.guestIp}/${n.prefix} via ${n.gatewayIp}` : "";
  const inside = n.interfaceIp ? ` (inside: ${n.interfaceIp})` : "";
  const dev = n.tapDevice ? ` dev ${n.tapDevice}` : "";
  const mac = n.macAddress ? ` mac ${n.macAddress}` : "";
  const dns = n.dns.length ? ` dns ${n.dns.join(",")}` : "";
  return `${n.mode}${addr}${inside}${dev}${mac}${dns}; internet ${policy}${n.enforced ? "" : " (not enforced: no root)"}`;
}

/** `list`'s columns and the words that head them. */
const COLUMNS: [string, string][] = [
  ["vmId", "ID"],
  ["name", "NAME"],
  ["status", "STATUS"],
  ["image", "IMAGE"],
  ["backend", "BACKEND"],
  ["accel", "ACCEL"],
  ["pid", "PID"],
  ["memory", "MEMORY"],
  ["vcpuCount", "CPUS"],
  ["labels", "LABELS"],
  ["expires", "EXPIRES"],
  ["createdAt", "CREATED"],
];

/** A status value as text: objects (labels) as `k=v, k=v`. */
function shown(v: unknown): string {
  if (v === null || v === undefined || v === "") return "-";
  if (typeof v === "object") {
    const e = Object.entries(v as Record<string, unknown>);
    return e.length ? e.map(([k, x]) => `${k}=${String(x)}`).join(", ") : "-";
  }
  return String(v);
}

/** `--filter label=KEY` (has the label) or `label=KEY=VALUE`; several filters must all hold. */
export function vmFilter(filters: string[] = []): (vm: VMInfo) => boolean {
  const tests = filters.map((f) => {
    const m = /^label=([^=]+)(?:=(.*))?$/.exec(f);
    if (!m) throw new ConfigError("--filter", `expected label=KEY or label=KEY=VALUE, got ${JSON.stringify(f)}`);
    const [, key, value] = m as unknown as [string, string, string | undefined];
    return (vm: VMInfo) => (value === undefined ? key in vm.labels : vm.labels[key] === value);
  });
  return (vm) => tests.every((t) => t(vm));
}

export function registerLifecycle(program: Command): void {
  addVmOptions(program.command("create").description("create and start a VM; prints its id"))
    .option("--name <name>", "unique name")
    .option("--snapshot <snapshot>", "start from a snapshot (restore) instead of booting")
    .option("--timeout, --ttl <duration>", "its lifetime (30s, 10m, 2h...): then deleted, or paused (--on-timeout)")
    .option("--on-timeout <action>", "delete (default) | pause")
    .option("--json", "print the VM as JSON")
    .action(async (o: VmOptions & LifetimeOptions & { snapshot?: string }) => {
      const lifetime = { ...lifetimeFlags(o), keep: true };
      if (o.snapshot) snapshotConflicts(o);
      const vm = o.snapshot
        ? await SmolVM.fromSnapshot(o.snapshot, { name: o.name, network: networkFrom(o), ...lifetime })
        : await SmolVM.create(vmConfigFrom(o, lifetime), { onProgress: progress });
      if (o.json) printJson(vm.info());
      else process.stdout.write(`${vm.vmId}\n`);
      vm.close();
    });

  program
    .command("list")
    .alias("ls")
    .description("list VMs")
    .option(
      "--filter <filter...>",
      "only VMs with this label: label=KEY or label=KEY=VALUE (repeatable: all must hold)",
    )
    .option("--json", "print JSON")
    .action(async (o: { json?: boolean; filter?: string[] }) => {
      const keep = vmFilter(o.filter);
      const vms = (await SmolVM.list()).filter(keep);
      if (o.json) {
        printJson(vms);
        return;
      }
      const rows = vms.map((v) => ({
        ...v,
        memory: `${v.memSizeMib} MiB`,
        labels: Object.entries(v.labels)
          .map(([k, val]) => `${k}=${val}`)
          .join(","),
        expires: v.timeLeftMs === null ? null : `${formatDuration(v.timeLeftMs)} (${v.onTimeout})`,
      }));
      process.stdout.write(`${table(rows as unknown as Record<string, unknown>[], COLUMNS)}\n`);
    });

  program
    .command("status <id>")
    .description("show a VM's status")
    .option("--json", "print JSON")
    .action(async (id: string, o: { json?: boolean }) => {
      const vm = await SmolVM.fromId(id);
      const info = { ...vm.info(), network: vm.networkConfig, ports: vm.ports() };
      if (o.json) printJson(info);
      else {
        const { network, ports, ...rest } = info;
        for (const [k, v] of Object.entries(rest)) process.stdout.write(`${k.padEnd(11)} ${shown(v)}\n`);
        process.stdout.write(`${"network".padEnd(11)} ${describeNetwork(network)}\n`);
        for (const p of ports) process.stdout.write(`${"port".padEnd(11)} ${p.url} -> guest ${p.guestPort}\n`);
      }
      vm.close();
    });

  program
    .command("set-timeout <id> <duration>")
    .description("give a running VM a new lifetime from now (30s, 10m, 2h...; none: no end)")
    .option("--json", "print JSON")
    .action(async (id: string, d: string, o: { json?: boolean }) => {
      const ms = d === "none" ? null : parseDuration("duration", d, LIFETIME_MS);
      const vm = await SmolVM.fromId(id);
      vm.setTimeout(ms);
      const i = vm.info();
      if (o.json) printJson(i);
      else process.stdout.write(`${vm.vmId} ${i.expiresAt ? `${i.onTimeout} at ${i.expiresAt}` : "no lifetime"}\n`);
      vm.close();
    });

  program
    .command("start <id>")
    .description("boot a stopped VM again from its own disk (a running VM is left as it is)")
    .option("--json", "print JSON")
    .action(async (id: string, o: { json?: boolean }) => {
      const vm = await SmolVM.fromId(id);
      if (vm.status === "paused") throw new VMStateError(`VM ${vm.vmId} is paused; ${howToRun(vm.vmId, "paused")}`);
      await vm.start({ onProgress: progress });
      if (o.json) printJson(vm.info());
      else process.stdout.write(`${vm.vmId} ${vm.status}\n`);
      vm.close();
    });

  program
    .command("stop <id>")
    .description("shut a VM down cleanly (its disk is kept; 'smolvm start' boots it again)")
    .option("--json", "print JSON")
    .action(async (id: string, o: { json?: boolean }) => {
      const vm = await SmolVM.fromId(id);
      await vm.stop();
      if (o.json) printJson(vm.info());
      else process.stdout.write(`${vm.vmId} stopped\n`);
    });

  program
    .command("rm [ids...]")
    .description("delete VMs: process, sockets, disk layer and record")
    .option("--all", "delete every VM")
    .option("-f, --force", "also delete running VMs")
    .option("--json", "print JSON")
    .action(async (ids: string[], o: { all?: boolean; force?: boolean; json?: boolean }) => {
      if (o.all) ids = (await SmolVM.list()).map((v) => v.vmId);
      else if (!ids.length) throw new SmolVMError("name the VMs to delete, or pass --all");
      const removed: string[] = [];
      const refused: string[] = [];
      for (const id of ids) {
        const vm = await SmolVM.fromId(id);
        if (!o.force && (vm.status === "running" || vm.status === "paused")) {
          refused.push(vm.vmId);
          continue;
        }
        await vm.delete();
        removed.push(vm.vmId);
      }
      if (o.json) printJson({ removed, refused });
      else for (const id of removed) process.stdout.write(`${id}\n`);
      if (refused.length) {
        process.stderr.write(`smolvm: still running, not deleted (use --force): ${refused.join(", ")}\n`);
        process.exitCode = 1;
      }
    });
}

export interface LifetimeOptions {
  /** `--timeout` or `--ttl` (commander names it after the last). */
  ttl?: string;
  onTimeout?: string;
}

/** `--timeout/--ttl` and `--on-timeout` as config fields (checked here: nothing has started yet). */
export function lifetimeFlags(o: LifetimeOptions): { timeoutMs?: number; onTimeout?: TimeoutAction } {
  if (o.onTimeout !== undefined && o.ttl === undefined) {
    throw new ConfigError("--on-timeout", "applies to a lifetime: give --timeout (or --ttl) too");
  }
  if (o.onTimeout !== undefined && !(TIMEOUT_ACTIONS as readonly string[]).includes(o.onTimeout)) {
    throw new ConfigError("--on-timeout", `must be delete or pause, got ${JSON.stringify(o.onTimeout)}`);
  }
  return {
    timeoutMs: o.ttl === undefined ? undefined : parseDuration("--timeout", o.ttl, LIFETIME_MS),
    onTimeout: o.onTimeout as TimeoutAction | undefined,
  };
}

/** Flags that a restore cannot honour (the snapshot fixes them): an error naming both. */
const SNAPSHOT_FIXED: [keyof VmOptions, string][] = [
  ["mem", "--mem"],
  ["cpus", "--cpus"],
  ["backend", "--backend"],
  ["diskMode", "--disk-mode"],
  ["rootfs", "--rootfs"],
  ["image", "--image"],
  ["diskSize", "--disk-size"],
  ["coldBoot", "--cold-boot"],
  ["env", "--env"],
  ["label", "--label"],
];

function snapshotConflicts(o: VmOptions): void {
  for (const [k, flag] of SNAPSHOT_FIXED) {
    if (o[k] !== undefined) {
      throw new ConfigError(
        flag,
        `cannot be combined with --snapshot: a restored VM has the snapshot's (its memory, CPUs, disk and env are saved in it)`,
      );
    }
  }
}
