/** Public SDK surface of SmolVM. */

export type { AccelName, BackendName, DiskMode, ResolvedVMConfig, VMConfig } from "./config.js";
export { BACKENDS, DEFAULTS, DISK_MODES, LIMITS } from "./config.js";
export { type DoctorCheck, type DoctorReport, doctor } from "./doctor.js";
export {
  AgentError,
  BackendUnavailableError,
  CommandTimeoutError,
  ConfigError,
  ImageError,
  SmolVMError,
  VMDiedError,
  VMNotFoundError,
  VMStateError,
} from "./errors.js";
export type { CommandResult, RunOptions } from "./sandbox/commands.js";
export { SmolVM, type StartOptions, type StartTimings, type VMInfo, type VMStatus } from "./sandbox/smolvm.js";
