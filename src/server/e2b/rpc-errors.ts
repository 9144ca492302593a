/** SmolVM's errors as Connect errors, with the codes E2B's SDKs map to their own error classes. */
import { Code, ConnectError } from "@connectrpc/connect";
import { ConfigError, FileNotFoundError, FileSystemError, VMNotFoundError, VMStateError } from "../../errors.js";
import { EnvdAccessError } from "./access.js";
import { E2bError } from "./errors.js";

const FS_CODES: Record<string, Code> = {
  EEXIST: Code.AlreadyExists,
  EACCES: Code.PermissionDenied,
  EPERM: Code.PermissionDenied,
  EROFS: Code.PermissionDenied,
  ENOTDIR: Code.InvalidArgument,
  EISDIR: Code.InvalidArgument,
  EINVAL: Code.InvalidArgument,
  ENAMETOOLONG: Code.InvalidArgument,
  ENOTEMPTY: Code.FailedPrecondition,
  ENOSPC: Code.ResourceExhausted,
  EFBIG: Code.ResourceExhausted,
};

export function toConnectError(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  if (e instanceof EnvdAccessError) {
    return new ConnectError(e.message, e.kind === "unauthenticated" ? Code.Unauthenticated : Code.Unavailable);
  }
  if (e instanceof VMNotFoundError || e instanceof VMStateError) return new ConnectError(e.message, Code.Unavailable);
  if (e instanceof FileNotFoundError) return new ConnectError(e.message, Code.NotFound);
  if (e instanceof FileSystemError) return new ConnectError(e.message, FS_CODES[e.code] ?? Code.Internal);
  if (e instanceof ConfigError) return new ConnectError(e.message, Code.InvalidArgument);
  if (e instanceof E2bError) {
    const code = e.status === 404 ? Code.NotFound : e.status < 500 ? Code.InvalidArgument : Code.Internal;
    return new ConnectError(e.message, code);
  }
  if (e instanceof RangeError) return new ConnectError(e.message, Code.ResourceExhausted);
  const message = e instanceof Error ? e.message : String(e);
  if (/no such process/.test(message)) return new ConnectError(message, Code.NotFound);
  return new ConnectError(message, Code.Internal);
}

/** A unary handler whose failures become Connect errors. */
export function unary<A extends unknown[], R>(fn: (...args: A) => Promise<R>): (...args: A) => Promise<R> {
  return async (...args) => {
    try {
      return await fn(...args);
    } catch (e) {
      throw toConnectError(e);
    }
  };
}

/** A server-streaming handler whose failures become Connect errors. */
export function streaming<A extends unknown[], R>(
  fn: (...args: A) => AsyncGenerator<R>,
): (...args: A) => AsyncGenerator<R> {
  return async function* (...args: A) {
    try {
      yield* fn(...args);
    } catch (e) {
      throw toConnectError(e);
    }
  };
}
