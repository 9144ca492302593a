/**
 * E2B templates → SmolVM images. E2B runs commands with `/bin/bash -l -c`, so its default template `base` maps to
 * the `python` image (Debian, bash, python3). `code-interpreter-v1` maps to `python` too (without Jupyter: only
 * commands and files work). Any other template id is taken as a SmolVM image name (a preset, a local image id or
 * an OCI reference); one that does not resolve is a 404, as E2B answers for an unknown template.
 */
const ALIASES: Record<string, string> = {
  base: "python",
  "code-interpreter-v1": "python",
};

const TEMPLATE_RE = /^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,255}$/;

export const DEFAULT_TEMPLATE = "base";

/** The image for a template id, or null when the id cannot name one. */
export function templateImage(templateId: string): string | null {
  if (!TEMPLATE_RE.test(templateId)) return null;
  return ALIASES[templateId] ?? templateId;
}
