/** Kernel module dependency resolution from the `.ko` files themselves (no depmod needed). */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/** The drivers the guest needs, in no particular order; their dependencies are found from each file. */
export const WANTED_MODULES = [
  "virtio_mmio",
  "virtio_blk",
  "virtio_console",
  "virtio_net",
  "vmw_vsock_virtio_transport",
  "virtio_rng",
];

const norm = (name: string) => name.replace(/-/g, "_");

/** Map of module name to file path, for every `.ko` below `dir`. */
export function indexModules(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".ko")) out.set(norm(e.name.slice(0, -3)), p);
    }
  };
  walk(dir);
  return out;
}

/** The `depends=` list of a module's .modinfo section. */
export function moduleDepends(file: string): string[] {
  const buf = readFileSync(file);
  const at = buf.indexOf("depends=", 0, "latin1");
  if (at < 0) return [];
  const end = buf.indexOf(0, at);
  const list = buf.toString("latin1", at + "depends=".length, end < 0 ? undefined : end);
  return list
    .split(",")
    .map((s) => norm(s.trim()))
    .filter(Boolean);
}

/**
 * Files to load, dependencies first, for `wanted` and everything they need. Modules not found as files are taken
 * to be built into the kernel and are reported in `builtin`.
 */
export function resolveModules(
  index: Map<string, string>,
  wanted: string[] = WANTED_MODULES,
): { order: string[]; builtin: string[] } {
  const order: string[] = [];
  const builtin: string[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (name: string, chain: string[]) => {
    const n = norm(name);
    if (state.get(n) === "done") return;
    if (state.get(n) === "visiting") throw new Error(`module dependency cycle: ${[...chain, n].join(" -> ")}`);
    const file = index.get(n);
    if (!file) {
      builtin.push(n);
      state.set(n, "done");
      return;
    }
    state.set(n, "visiting");
    for (const dep of moduleDepends(file)) visit(dep, [...chain, n]);
    state.set(n, "done");
    order.push(file);
  };
  for (const w of wanted) visit(w, []);
  return { order, builtin };
}
