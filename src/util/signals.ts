/** Signals by name or number, as the CLI's `kill` and the REST API take them. */
import { constants } from "node:os";
import { ConfigError } from "../errors.js";

const signals = constants.signals as Record<string, number>;

/** A signal given as a name (`TERM`, `SIGTERM`, `term`) or a number (1-64); anything else is a ConfigError. */
export function parseSignal(v: string | number): number {
  if (typeof v === "number" || /^[0-9]+$/.test(v)) {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new ConfigError("signal", `must be 1 to 64, got ${v}`);
    return n;
  }
  const name = v.toUpperCase();
  const n = signals[name.startsWith("SIG") ? name : `SIG${name}`];
  if (n === undefined) {
    throw new ConfigError(
      "signal",
      `unknown signal ${JSON.stringify(v)}: give a name (TERM, KILL, INT, HUP, ...) or a number from 1 to 64`,
    );
  }
  return n;
}

/** The signal's name (`SIGKILL`), or its number when it has none. */
export function signalName(n: number): string {
  return Object.keys(signals).find((k) => signals[k] === n) ?? String(n);
}
