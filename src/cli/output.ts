/** Output helpers shared by CLI commands. */
import { ConfigError, SmolVMError } from "../errors.js";

export const printJson = (v: unknown) => process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);

/** Progress lines go to stderr so stdout stays clean for data. */
export const progress = (msg: string) => process.stderr.write(`smolvm: ${msg}\n`);

export function table(rows: Record<string, unknown>[], columns: string[]): string {
  const cells = rows.map((r) => columns.map((c) => (r[c] === null || r[c] === undefined ? "-" : String(r[c]))));
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((row) => (row[i] as string).length)));
  const line = (vals: string[]) =>
    vals
      .map((v, i) => v.padEnd(widths[i] as number))
      .join("  ")
      .trimEnd();
  return [line(columns.map((c) => c.toUpperCase())), ...cells.map(line)].join("\n");
}

/** Parse a numeric option; a bad value becomes a ConfigError naming the config field. */
export function num(field: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n))
    throw new ConfigError(field, `must be a number, got ${JSON.stringify(v)}`);
  return n;
}

export function parseEnv(pairs: string[] = []): Record<string, string> {
  const env: Record<string, string> = {};
  for (const p of pairs) {
    const eq = p.indexOf("=");
    if (eq <= 0) throw new ConfigError("env", `expected KEY=VALUE, got ${JSON.stringify(p)}`);
    env[p.slice(0, eq)] = p.slice(eq + 1);
  }
  return env;
}

/** One argument is a shell command line (`smolvm run -- 'ls | wc -l'`); several are an argv. */
export const toCommand = (args: string[]): string | string[] => (args.length === 1 ? (args[0] as string) : args);

/** Print an error the way users should see it and return the process exit code. */
export function reportError(e: unknown, json: boolean): number {
  const err = e as Error;
  const code = e instanceof ConfigError ? 2 : 1;
  if (json) printJson({ error: { type: err.name, message: err.message } });
  else process.stderr.write(`smolvm: ${e instanceof SmolVMError ? "" : `${err.name}: `}${err.message}\n`);
  return code;
}
