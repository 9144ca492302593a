/**
 * E2B sandbox metadata stored as SmolVM VM labels (which are what `list` filters on).
 *
 * Encoding, per metadata entry `key: value`:
 * - label key `e2b.m.<key>` when `key` already is a valid label key fragment (letters, digits, `._-`, starting and
 *   ending with a letter or digit, at most 122 characters);
 * - otherwise `e2b.x.<hex of the UTF-8 key>` (keys up to 61 bytes);
 * - the value is kept as it is (label values: up to 256 characters, no control characters).
 * Anything else is refused (400). The sandbox's template name is kept in the label `e2b.template`.
 * Labels not starting with `e2b.m.` / `e2b.x.` (set through the REST API or the CLI) are not metadata.
 */
import { MAX_LABELS } from "../../config.js";
import { E2bError } from "./errors.js";

export const TEMPLATE_LABEL = "e2b.template";
const PLAIN = "e2b.m.";
const HEX = "e2b.x.";
const PLAIN_KEY = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,120}[A-Za-z0-9])?$/;
const MAX_HEX_KEY_BYTES = 61;
// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
const BAD_VALUE = /[\u0000-\u001f\u007f-\u009f]/;
/** Room left for the labels this module adds itself (the template). */
export const MAX_METADATA = MAX_LABELS - 1;

export function metadataLabelKey(key: string): string {
  if (PLAIN_KEY.test(key)) return PLAIN + key;
  const bytes = Buffer.from(key, "utf8");
  if (key === "" || bytes.length > MAX_HEX_KEY_BYTES) {
    throw new E2bError(
      400,
      `metadata key ${JSON.stringify(key.slice(0, 80))}: must be 1 to ${MAX_HEX_KEY_BYTES} bytes`,
    );
  }
  return HEX + bytes.toString("hex");
}

export function checkMetadataValue(key: string, value: unknown): string {
  if (typeof value !== "string" || value.length > 256 || BAD_VALUE.test(value)) {
    throw new E2bError(
      400,
      `metadata value of ${JSON.stringify(key.slice(0, 80))}: must be a string of at most 256 characters without control characters`,
    );
  }
  return value;
}

/** E2B metadata → VM labels (validated: throws E2bError 400). */
export function metadataToLabels(metadata: Record<string, unknown> | null | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  const entries = Object.entries(metadata ?? {});
  if (entries.length > MAX_METADATA) throw new E2bError(400, `at most ${MAX_METADATA} metadata entries`);
  for (const [k, v] of entries) out[metadataLabelKey(k)] = checkMetadataValue(k, v);
  return out;
}

/** VM labels → E2B metadata (labels that are not encoded metadata are left out). */
export function labelsToMetadata(labels: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) {
    if (k.startsWith(PLAIN)) out[k.slice(PLAIN.length)] = v;
    else if (k.startsWith(HEX) && /^([0-9a-f]{2})+$/.test(k.slice(HEX.length))) {
      out[Buffer.from(k.slice(HEX.length), "hex").toString("utf8")] = v;
    }
  }
  return out;
}

/**
 * The `metadata` query filter of `GET /v2/sandboxes`: the SDK sends `encodeURIComponent` of each key and value,
 * joined as a query string (`k1=v1&k2=v2`), itself sent as one query value.
 */
export function parseMetadataQuery(q: string | undefined): Record<string, string> {
  if (!q) return {};
  if (q.length > 16384) throw new E2bError(400, "metadata filter too long");
  const out: Record<string, string> = {};
  for (const [k, v] of new URLSearchParams(q)) {
    let key = k;
    let value = v;
    try {
      key = decodeURIComponent(k);
      value = decodeURIComponent(v);
    } catch {
      throw new E2bError(400, "metadata filter: invalid percent-encoding");
    }
    out[key] = value;
  }
  return out;
}
