/** Output helpers shared by CLI commands. */

import { CommandTimeoutError, ConfigError, SmolVMError } from "../errors.js";
import { parseDuration as durationIn } from "./duration.js";

export const printJson = (v: unknown) => process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);

/** Progress lines go to stderr so stdout stays clean for data. */
export const progress = (msg: string) => process.stderr.write(`smolvm: ${msg}\n`);

/** Rows as aligned text; a column is a field name (headed by itself, upper-cased) or [field, heading]. */
export function table(rows: Record<string, unknown>[], cols: (string | [string, string])[]): string {
  const columns = cols.map((c) => (typeof c === "string" ? c : c[0]));
  const heads = cols.map((c) => (typeof c === "string" ? c.toUpperCase() : c[1]));
  const cells = rows.map((r) =>
    columns.map((c) => (r[c] === null || r[c] === undefined || r[c] === "" ? "-" : String(r[c]))),
  );
  const widths = columns.map((_, i) =>
    Math.max((heads[i] as string).length, ...cells.map((row) => (row[i] as string).length)),
  );
  const line = (vals: string[]) =>
    vals
      .map((v, i) => v.padEnd(widths[i] as number))
      .join("  ")
      .trimEnd();
  return [line(heads), ...cells.map(line)].join("\n");
}

/** The longest delay a Node.js timer honours: a longer one fires after 1 ms. */
export const MAX_TIMER_MS = 2_147_483_647;

/** The range an integer option must lie in; `unit` (e.g. "milliseconds") names what it counts, for messages. */
export interface IntRange {
  min: number;
  max: number;
  unit?: string;
}

/**
 * Parse an integer option: only plain decimal digits (no sign, hex, exponent, fraction, spaces or `_`) giving a
 * safe integer within [min, max]. Anything else is a ConfigError naming the config field and what is allowed.
 */
export function int(field: string, v: string, range: IntRange): number;
export function int(field: string, v: string | undefined, range: IntRange): number | undefined;
export function int(field: string, v: string | undefined, { min, max, unit }: IntRange): number | undefined {
  if (v === undefined) return undefined;
  const n = /^[0-9]+$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    const what = unit ? `a whole number of ${unit}` : "a whole number";
    throw new ConfigError(field, `must be ${what} from ${min} to ${max}, got ${JSON.stringify(v)}`);
  }
  return n;
}

/** `KEY=VALUE` arguments as a map; a malformed one is a ConfigError naming `field`. */
export function parsePairs(pairs: string[] = [], field = "env"): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const eq = p.indexOf("=");
    if (eq <= 0) throw new ConfigError(field, `expected KEY=VALUE, got ${JSON.stringify(p)}`);
    out[p.slice(0, eq)] = p.slice(eq + 1);
  }
  return out;
}

export const parseEnv = (pairs: string[] = []) => parsePairs(pairs, "env");

/** One argument is a shell command line (`smolvm run -- 'ls | wc -l'`); several are an argv. */
export const toCommand = (args: string[]): string | string[] => (args.length === 1 ? (args[0] as string) : args);

/**
 * A duration option in milliseconds: a whole number of milliseconds (`1500`, as before) or a number with a unit
 * (`500ms`, `30s`, `1.5s`, `5m`, `1h`), from 1 ms to the longest timer Node.js honours. Anything else (`abc`,
 * `-1`, `1.5.2`, ``) is a ConfigError naming `field` (the flag).
 */
export function parseDuration(field: string, v: string): number;
export function parseDuration(field: string, v: string | undefined): number | undefined;
export function parseDuration(field: string, v: string | undefined): number | undefined {
  return v === undefined ? undefined : durationIn(field, v, [1, MAX_TIMER_MS]);
}

/**
 * The exit code scheme (README, "Exit codes"): a guest command's own code (128 + n when a signal killed it) is set
 * by the command itself; here, the codes of SmolVM's own outcomes.
 */
export const EXIT = {
  /** a usage error: unknown option, missing argument, a bad value (ConfigError) */
  USAGE: 2,
  /** `--timeout` killed the command */
  TIMEOUT: 124,
  /** SmolVM itself failed in a command that runs a guest command (run, exec, attach, shell, pack run) */
  RUN_FAILED: 125,
  /** SmolVM itself failed in any other command */
  FAILED: 1,
} as const;

/** The exit code for an error; `runsCommand`: the command runs a guest command (so 125, not 1, for a failure). */
export function exitCodeFor(e: unknown, runsCommand: boolean): number {
  if (e instanceof ConfigError) return EXIT.USAGE;
  if (e instanceof CommandTimeoutError) return EXIT.TIMEOUT;
  return runsCommand ? EXIT.RUN_FAILED : EXIT.FAILED;
}

/**
 * Print an error the way users should see it and return the process exit code (see `exitCodeFor`). Never throws,
 * even if `e` is not an Error or the output stream is closed.
 */
export function reportError(e: unknown, json: boolean, runsCommand = false): number {
  const code = exitCodeFor(e, runsCommand);
  try {
    const name = e instanceof Error ? e.name : "Error";
    const message = e instanceof Error ? e.message : String(e);
    if (json) printJson({ error: { type: name, message } });
    else process.stderr.write(`smolvm: ${e instanceof SmolVMError ? "" : `${name}: `}${message}\n`);
  } catch {
    // nowhere left to report to
  }
  return code;
}
