/** Base class of every error SmolVM throws on purpose. */
export class SmolVMError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A configuration value is missing, of the wrong type or out of range. `field` names it. */
export class ConfigError extends SmolVMError {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

/** No VM with this id or name is known to the state store. */
export class VMNotFoundError extends SmolVMError {
  constructor(readonly vmId: string) {
    super(`VM not found: ${vmId}`);
  }
}

/** The VM is not in a state that allows the operation (e.g. running a command on a stopped VM). */
export class VMStateError extends SmolVMError {}

/**
 * What makes a VM in `status` usable again, as a sentence naming the command (and SDK call) that does it; used by
 * every "the VM is not running" error so none points at the wrong remedy.
 */
export function howToRun(vmId: string, status: string, reason?: string | null): string {
  if (status === "paused") return `resume it: smolvm resume ${vmId} (vm.resume())`;
  if (status === "running") return "it is running";
  if (status === "crashed") {
    return `it crashed${reason ? ` (${reason})` : ""}; its console: smolvm logs ${vmId}; start it again: smolvm start ${vmId} (vm.start())`;
  }
  return `start it: smolvm start ${vmId} (vm.start()) boots it again from its disk`;
}

/** The VM (or its agent channel) went away while an operation was pending. */
export class VMDiedError extends SmolVMError {}

/** A command ran past its timeout; it was killed. Partial output is kept. */
export class CommandTimeoutError extends SmolVMError {
  constructor(
    readonly command: string,
    readonly timeoutMs: number,
    readonly stdout: string,
    readonly stderr: string,
    /** Some output was dropped because it exceeded `maxOutputBytes`. */
    readonly truncated = false,
  ) {
    super(`command timed out after ${timeoutMs} ms and was killed: ${command}`);
  }
}

/** A command was cancelled through its AbortSignal; it was killed. Partial output is kept. */
export class CommandAbortedError extends SmolVMError {
  constructor(
    readonly command: string,
    readonly stdout: string,
    readonly stderr: string,
  ) {
    super(`command aborted and killed: ${command}`);
  }
}

/** A backend cannot run on this host. The message says how to fix it. */
export class BackendUnavailableError extends SmolVMError {
  constructor(
    readonly backend: string,
    message: string,
  ) {
    super(`${backend} backend unavailable: ${message}`);
  }
}

/** The guest agent broke the protocol or reported an error; `code` is the guest's errno when it gave one. */
export class AgentError extends SmolVMError {
  constructor(
    message: string,
    readonly code?: number,
  ) {
    super(message);
  }
}

/** A guest path does not exist. */
export class FileNotFoundError extends SmolVMError {
  constructor(readonly path: string) {
    super(`no such file or directory in the guest: ${path}`);
  }
}

/** A file operation failed in the guest (read-only file system, permission denied, is a directory, ...). */
export class FileSystemError extends SmolVMError {
  constructor(
    readonly path: string,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Building or finding an image (kernel, initramfs, rootfs) failed. */
export class ImageError extends SmolVMError {}
