import { readFileSync } from "node:fs";

/**
 * The host's TSC frequency in kHz, when the host kernel knows it exactly (flags `constant_tsc` and `tsc_known_freq`;
 * `cpu MHz` is then the TSC rate), else null.
 *
 * Why: under TCG the guest's TSC ticks at the host's TSC rate, and the guest kernel's early calibration against the
 * emulated PIT is a timing loop that software emulation sometimes fails ("tsc: Unable to calibrate against PIT"),
 * after which boot stalls for good. Measured here: about 1 boot in 10 hung; with `tsc_early_khz` 30 of 30 booted.
 */
export function hostTscKhz(cpuinfo?: string): number | null {
  let text = cpuinfo;
  if (text === undefined) {
    try {
      text = readFileSync("/proc/cpuinfo", "utf8");
    } catch {
      return null;
    }
  }
  const flags = /^flags\s*:(.*)$/m.exec(text)?.[1]?.split(/\s+/) ?? [];
  if (!flags.includes("constant_tsc") || !flags.includes("tsc_known_freq")) return null;
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(text)?.[1]);
  return Number.isFinite(mhz) && mhz > 100 ? Math.round(mhz * 1000) : null;
}
