/** `vm.env`: environment held by the guest agent in memory (never written to disk), applied to every later command. */
import type { AgentClient } from "../agent/client.js";
import { decodeFields, F, type Field, T } from "../agent/codec.js";
import { AgentError, ConfigError } from "../errors.js";

const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function checkEnv(vars: Record<string, string>, field = "env"): void {
  for (const [k, v] of Object.entries(vars)) {
    if (!KEY.test(k)) throw new ConfigError(`${field}.${k}`, "is not a valid variable name");
    if (typeof v !== "string" || v.includes("\0"))
      throw new ConfigError(`${field}.${k}`, "must be a string without NUL");
  }
}

export class Env {
  constructor(private readonly agent: () => Promise<AgentClient>) {}

  async set(vars: Record<string, string>): Promise<void> {
    checkEnv(vars);
    const fields: Field[] = Object.entries(vars).map(([k, v]) => [F.ENV, `${k}=${v}`]);
    await (await this.agent()).op(T.ENV_SET, fields).done;
  }

  async unset(names: string[]): Promise<void> {
    for (const n of names) if (!KEY.test(n)) throw new ConfigError(`env.${n}`, "is not a valid variable name");
    await (await this.agent()).op(
      T.ENV_UNSET,
      names.map((n) => [F.ENV, n] as Field),
    ).done;
  }

  async list(): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    let total = 0;
    const h = (await this.agent()).op(T.ENV_LIST, [], (b) => {
      total += b.length;
      if (total > 1 << 20) throw new AgentError("the guest sent more than 1 MiB of environment");
      for (const [, v] of decodeFields(b)) {
        const s = v.toString();
        const eq = s.indexOf("=");
        if (eq > 0) out[s.slice(0, eq)] = s.slice(eq + 1);
      }
    });
    await h.done;
    return out;
  }
}
