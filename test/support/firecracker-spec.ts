/**
 * Firecracker's OpenAPI description (test/fixtures/firecracker-api.yaml, swagger 2.0) as a request validator: find
 * the operation of a method and concrete path, and check a body against the schema of its body parameter with a
 * JSON-schema draft-04 validator (swagger 2.0 schemas are draft-04 with `$ref: "#/definitions/X"`).
 *
 * `strict`: the spec never says `additionalProperties: false`, but Firecracker parses bodies with serde's
 * `deny_unknown_fields` and answers 400 to a field it does not know; strict validation adds that rule to every
 * object schema that lists properties and says nothing about others, so a misspelt field fails here too.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import AjvModule, { type ErrorObject, type ValidateFunction } from "ajv-draft-04";
import { parse } from "yaml";

const Ajv = AjvModule.default;

export const SPEC_PATH = join(import.meta.dirname, "..", "..", "..", "test", "fixtures", "firecracker-api.yaml");

type Json = Record<string, unknown>;

export interface Operation {
  method: string;
  /** The path template, e.g. `/drives/{drive_id}`. */
  template: string;
  operationId: string;
  /** The body parameter's schema, if the operation takes a body. */
  bodySchema: Json | null;
  bodyRequired: boolean;
}

export interface Spec {
  version: string;
  raw: Json;
  /** The operation answering `method path` (a concrete path), or null when the spec has none. */
  operation(method: string, path: string): Operation | null;
  /** Schema errors of `body` as the body of `method path` (empty: valid). Throws if the spec has no such operation. */
  validate(method: string, path: string, body: unknown, opts?: { strict?: boolean }): string[];
  /** Schema errors of `value` against `#/definitions/<name>`. */
  validateDefinition(name: string, value: unknown, opts?: { strict?: boolean }): string[];
}

/** Swagger's integer formats, checked; any other format the spec names is accepted as it is (none is used here). */
const INT_FORMATS: Record<string, [number, number]> = {
  int32: [-(2 ** 31), 2 ** 31 - 1],
  int64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
};

function walk(v: unknown, visit: (o: Json) => void): void {
  if (Array.isArray(v)) for (const x of v) walk(x, visit);
  else if (v && typeof v === "object") {
    visit(v as Json);
    for (const x of Object.values(v)) walk(x, visit);
  }
}

function closeObjects(definitions: Json): Json {
  const copy = structuredClone(definitions);
  walk(copy, (o) => {
    if (o.type === "object" && o.properties && typeof o.properties === "object" && !("additionalProperties" in o)) {
      o.additionalProperties = false;
    }
  });
  return copy;
}

function message(e: ErrorObject): string {
  const extra =
    e.keyword === "additionalProperties" ? ` (${(e.params as { additionalProperty: string }).additionalProperty})` : "";
  return `${e.instancePath || "(body)"} ${e.message ?? e.keyword}${extra}`;
}

export function loadSpec(file = SPEC_PATH): Spec {
  const raw = parse(readFileSync(file, "utf8")) as Json;
  if (raw.swagger !== "2.0") throw new Error(`${file}: not a swagger 2.0 document`);
  const definitions = raw.definitions as Json;
  const formats = new Set<string>();
  walk(raw, (o) => {
    if (typeof o.format === "string") formats.add(o.format);
  });

  const makeAjv = (defs: Json) => {
    const ajv = new Ajv({ allErrors: true, strict: true, strictTypes: false, strictRequired: false });
    ajv.addVocabulary(["example", "readOnly"]); // swagger 2.0 annotations, not validation keywords
    for (const f of formats) {
      const range = INT_FORMATS[f];
      if (range) ajv.addFormat(f, { type: "number", validate: (n: number) => n >= range[0] && n <= range[1] });
      else ajv.addFormat(f, true);
    }
    ajv.addSchema({ id: "fc", definitions: defs });
    return ajv;
  };
  const plain = makeAjv(definitions);
  const strict = makeAjv(closeObjects(definitions));
  const compiled = new Map<string, ValidateFunction>();
  const validator = (schema: Json, isStrict: boolean): ValidateFunction => {
    // `#/definitions/X` refers to the spec's own definitions: point it at the schema added above
    const rewritten = JSON.parse(JSON.stringify(schema).replaceAll('"#/definitions/', '"fc#/definitions/')) as Json;
    const key = `${isStrict}:${JSON.stringify(rewritten)}`;
    let fn = compiled.get(key);
    if (!fn) {
      fn = (isStrict ? strict : plain).compile(isStrict ? (closeObjects({ s: rewritten }).s as Json) : rewritten);
      compiled.set(key, fn);
    }
    return fn;
  };
  const run = (schema: Json, value: unknown, isStrict: boolean) => {
    const fn = validator(schema, isStrict);
    return fn(value) ? [] : (fn.errors ?? []).map(message);
  };

  const paths = raw.paths as Record<string, Record<string, Json>>;
  const operations: Array<Operation & { re: RegExp }> = [];
  for (const [template, item] of Object.entries(paths)) {
    const re = new RegExp(`^${template.replace(/\{[^}]+\}/g, "[^/]+")}$`);
    for (const [method, op] of Object.entries(item)) {
      const params = (op.parameters ?? []) as Json[];
      const body = params.find((p) => p.in === "body");
      operations.push({
        method: method.toUpperCase(),
        template,
        operationId: String(op.operationId),
        bodySchema: (body?.schema as Json | undefined) ?? null,
        bodyRequired: body?.required === true,
        re,
      });
    }
  }
  const operation = (method: string, path: string) =>
    operations.find((o) => o.method === method.toUpperCase() && o.re.test(path)) ?? null;

  return {
    version: String((raw.info as Json).version),
    raw,
    operation,
    validate(method, path, body, opts = {}) {
      const op = operation(method, path);
      if (!op) throw new Error(`the spec has no operation ${method} ${path}`);
      if (!op.bodySchema) return body === undefined ? [] : [`${op.operationId} takes no body`];
      if (body === undefined) return op.bodyRequired ? ["(body) is required"] : [];
      return run(op.bodySchema, body, opts.strict ?? false);
    },
    validateDefinition(name, value, opts = {}) {
      if (!(name in definitions)) throw new Error(`the spec has no definition ${name}`);
      return run({ $ref: `#/definitions/${name}` }, value, opts.strict ?? false);
    },
  };
}
