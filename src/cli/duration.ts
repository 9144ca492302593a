/** Durations on the command line: `500ms`, `30s`, `5m`, `2h`, `1d`, or a plain number of milliseconds. */
import { ConfigError } from "../errors.js";

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Milliseconds as the shortest exact text (`90000` -> `1m30s`). */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  let s = Math.round(ms / 1000);
  const parts: string[] = [];
  for (const [u, n] of [
    ["d", 86_400],
    ["h", 3600],
    ["m", 60],
  ] as const) {
    if (s >= n) {
      parts.push(`${Math.floor(s / n)}${u}`);
      s %= n;
    }
  }
  if (s || !parts.length) parts.push(`${s}s`);
  return parts.join("");
}

/**
 * Parse a duration flag into ms within [min, max]; anything else (`abc`, `-1`, `1.5.2`, ``) is a ConfigError naming
 * `flag` and what is allowed. Units may be combined (`1m30s`); s, m, h and d may have a fraction (`1.5s`).
 */
export function parseDuration(flag: string, v: string, [min, max]: readonly [number, number]): number {
  const bad = (why: string) =>
    new ConfigError(flag, `${why}: write a duration like 30s, 5m, 1h30m or a number of ms, got ${JSON.stringify(v)}`);
  let ms: number;
  if (/^[0-9]{1,16}$/.test(v)) ms = Number(v);
  else {
    const parts = [...v.matchAll(/([0-9]{1,10}(?:\.[0-9]{1,3})?)(ms|s|m|h|d)/gy)];
    if (
      !parts.length ||
      parts.map((p) => p[0]).join("") !== v ||
      parts.some((p) => p[2] === "ms" && p[1]?.includes("."))
    ) {
      throw bad("not a duration");
    }
    ms = Math.round(parts.reduce((t, p) => t + Number(p[1]) * (UNITS[p[2] as string] as number), 0));
  }
  if (!Number.isSafeInteger(ms) || ms < min || ms > max) {
    throw bad(`must be from ${formatDuration(min)} to ${formatDuration(max)}`);
  }
  return ms;
}
