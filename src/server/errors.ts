/** One error shape for the REST API: `{ error: { code, message, field? } }` with the HTTP status SmolVM's error implies. */
import { hasZodFastifySchemaValidationErrors } from "fastify-type-provider-zod";
import {
  CommandTimeoutError,
  ConfigError,
  FileNotFoundError,
  FileSystemError,
  ImageError,
  SmolVMError,
  VMNotFoundError,
  VMStateError,
} from "../errors.js";
import { ImageNotFoundError } from "../images/oci/errors.js";
import { BrowserError, BrowserNotRunningError } from "../sandbox/browser.js";
import { SnapshotInUseError, SnapshotNotFoundError } from "../sandbox/snapshots.js";
import { TransferLimitError, UnsafeArchiveError } from "../sandbox/tar.js";
import { LimitError } from "./hub.js";

export interface ErrorBody {
  code: string;
  message: string;
  /** The request field at fault (validation errors). */
  field?: string;
  /** The server limit that was reached (429, 507). */
  limit?: string;
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: ErrorBody,
  ) {
    super(body.message);
  }
}

export function httpError(status: number, code: string, message: string, extra: Partial<ErrorBody> = {}): HttpError {
  return new HttpError(status, { code, message, ...extra });
}

interface Zodish {
  validation: { instancePath?: string; message?: string; params?: { issue?: { path?: (string | number)[] } } }[];
  validationContext?: string;
}

/** Map anything thrown by a handler to a status and body. */
export function toHttp(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  if (hasZodFastifySchemaValidationErrors(err)) {
    const z = err as unknown as Zodish;
    const first = z.validation[0];
    const path = first?.params?.issue?.path?.join(".") || first?.instancePath?.replace(/^\//, "").replace(/\//g, ".");
    const field = [z.validationContext === "body" ? "" : z.validationContext, path].filter(Boolean).join(".") || "body";
    return httpError(400, "invalid_request", `${field}: ${first?.message ?? "invalid"}`, { field });
  }
  if (err instanceof LimitError) return httpError(err.status, "limit_exceeded", err.message, { limit: err.limit });
  if (err instanceof ConfigError) return httpError(400, "invalid_request", err.message, { field: err.field });
  if (err instanceof VMNotFoundError) return httpError(404, "sandbox_not_found", err.message);
  if (err instanceof SnapshotNotFoundError || err instanceof ImageNotFoundError) {
    return httpError(404, "not_found", err.message);
  }
  if (err instanceof FileNotFoundError) return httpError(404, "file_not_found", err.message);
  if (err instanceof SnapshotInUseError) return httpError(409, "conflict", err.message);
  if (err instanceof VMStateError) return httpError(409, "sandbox_state", err.message);
  if (err instanceof FileSystemError) return httpError(400, err.code.toLowerCase(), err.message);
  if (err instanceof TransferLimitError) return httpError(413, "too_large", err.message);
  if (err instanceof UnsafeArchiveError) return httpError(400, "unsafe_archive", err.message);
  if (err instanceof CommandTimeoutError) return httpError(504, "command_timeout", err.message);
  if (err instanceof ImageError) return httpError(400, "image_error", err.message);
  // the page's or the browser's: a navigation error, no answer from it
  if (err instanceof BrowserNotRunningError) return httpError(409, "browser_not_running", err.message);
  if (err instanceof BrowserError) return httpError(422, "browser_error", err.message);
  const e = err as { statusCode?: number; code?: string; message?: string };
  if (typeof e.statusCode === "number" && e.statusCode >= 400 && e.statusCode < 500) {
    // Fastify's own: body too large (413), bad JSON (400), unsupported media type (415)
    return httpError(e.statusCode, (e.code ?? "bad_request").toLowerCase(), e.message ?? "bad request");
  }
  if (err instanceof SmolVMError) return httpError(500, "sandbox_error", err.message);
  return httpError(500, "internal", "internal error (see the server's log)");
}
