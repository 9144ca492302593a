/** Public SDK surface of SmolVM. */

export type {
  AccelName,
  BackendName,
  DiskMode,
  InternetPolicy,
  NetworkMode,
  NetworkOption,
  ResolvedVMConfig,
  VMConfig,
} from "./config.js";
export { BACKENDS, DEFAULTS, DISK_MODES, LIMITS, NETWORK_MODES } from "./config.js";
export { type DoctorCheck, type DoctorReport, doctor } from "./doctor.js";
export {
  AgentError,
  BackendUnavailableError,
  CommandAbortedError,
  CommandTimeoutError,
  ConfigError,
  FileNotFoundError,
  FileSystemError,
  ImageError,
  SmolVMError,
  VMDiedError,
  VMNotFoundError,
  VMStateError,
} from "./errors.js";
export { type ImageInfo, type ImageUsers, images, type PruneResult, type PullOptions } from "./images/api.js";
export {
  DigestMismatchError,
  ImageNotFoundError,
  RegistryAuthError,
  RegistryError,
  RegistryUnreachableError,
  UnsupportedPlatformError,
} from "./images/oci/errors.js";
export { PackError, type PackManifest } from "./images/pack.js";
export {
  type Browser,
  BrowserError,
  type BrowserInfo,
  type BrowserStartOptions,
  type PageInfo,
  type Viewport,
} from "./sandbox/browser.js";
export type { CommandOptions, CommandResult, Process, RunOptions, SpawnOptions } from "./sandbox/commands.js";
export type { Env } from "./sandbox/env.js";
export type { EntryInfo, EntryType, Files, WriteResult } from "./sandbox/files.js";
export type { Processes, ProcessInfo } from "./sandbox/processes.js";
export type { Pty, PtyHandle, PtyOptions } from "./sandbox/pty.js";
export {
  type ExposedPort,
  type NetworkInfo,
  SmolVM,
  type StartOptions,
  type StartTimings,
  type VMInfo,
  type VMStatus,
} from "./sandbox/smolvm.js";
export { type SnapshotInfo, SnapshotInUseError, SnapshotNotFoundError } from "./sandbox/snapshots.js";
export { TransferLimitError, UnsafeArchiveError } from "./sandbox/tar.js";
export type { TransferOptions } from "./sandbox/transfers.js";
