/** Guest paths as envd reads them: relative ones (and `~/...`) are under the user's home directory. */
import { posix } from "node:path";
import type { SmolVM } from "../../sandbox/smolvm.js";
import { E2bError } from "./errors.js";

/** The user a request runs as: the one it names, else the image's default user, else root. */
export function effectiveUser(vm: SmolVM, user: string | undefined): string {
  return user ?? vm.config.imageInfo?.user ?? "root";
}

export function homeOf(user: string): string {
  return user === "root" || user === "0" ? "/root" : `/home/${user}`;
}

/** An absolute, normalized guest path; throws E2bError 400 for an empty path or one with NUL bytes. */
export function guestPath(path: string | undefined, home: string): string {
  if (path === undefined || path === "" || path.includes("\0") || Buffer.byteLength(path) > 4096) {
    throw new E2bError(400, "path: a non-empty path without NUL bytes is required");
  }
  const rel = path === "~" ? "" : path.startsWith("~/") ? path.slice(2) : path;
  const abs = path.startsWith("/") ? path : posix.join(home, rel);
  const norm = posix.normalize(abs);
  return norm.length > 1 && norm.endsWith("/") ? norm.slice(0, -1) : norm;
}
