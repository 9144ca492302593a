/** Public SDK surface of SmolVM. */
export { SmolVM, type StartOptions, type VMInfo, type VMStatus } from "./sandbox/smolvm.js";
export type { CommandResult, RunOptions } from "./sandbox/commands.js";
export type { VMConfig, ResolvedVMConfig, BackendName, DiskMode, AccelName } from "./config.js";
export { BACKENDS, DISK_MODES, LIMITS, DEFAULTS } from "./config.js";
export {
  SmolVMError,
  ConfigError,
  VMNotFoundError,
  VMStateError,
  VMDiedError,
  CommandTimeoutError,
  BackendUnavailableError,
  AgentError,
  ImageError,
} from "./errors.js";
export { doctor, type DoctorReport, type DoctorCheck } from "./doctor.js";
