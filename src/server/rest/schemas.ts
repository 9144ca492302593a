/** Zod schemas of the REST API: they validate requests, type handlers and generate `/openapi.json`. */
import { z } from "zod";
import { BACKENDS, DISK_MODES, LIMITS, NETWORK_MODES, TIMEOUT_ACTIONS } from "../../config.js";

const ACCELS = ["auto", "kvm", "hvf", "tcg"] as const;

export const Internet = z.union([
  z.enum(["open", "off"]),
  z
    .object({
      allowCidrs: z.array(z.string()).max(256).optional(),
      allowDomains: z.array(z.string()).max(256).optional(),
    })
    .strict(),
]);

export const Network = z.union([
  z.enum(NETWORK_MODES),
  z.object({ mode: z.enum(NETWORK_MODES).optional(), internet: Internet.optional() }).strict(),
]);

const StringMap = z.record(z.string(), z.string());

/** Every `VMConfig` field a remote client may set (host paths: kernel, initrd, rootfs, are the host's business). */
export const CreateSandbox = z
  .object({
    name: z.string().max(64).optional().describe("Unique human-friendly name"),
    image: z.string().max(512).optional().describe("Image: a preset (python, node), base, or any OCI reference"),
    vcpuCount: z.number().int().min(LIMITS.vcpuCount[0]).max(LIMITS.vcpuCount[1]).optional(),
    memSizeMib: z.number().int().min(LIMITS.memSizeMib[0]).max(LIMITS.memSizeMib[1]).optional(),
    diskMode: z.enum(DISK_MODES).optional(),
    diskSizeMib: z.number().int().min(LIMITS.diskSizeMib[0]).max(LIMITS.diskSizeMib[1]).optional(),
    env: StringMap.optional().describe("Environment of every command"),
    labels: StringMap.optional().describe("Your own key/value labels (list filters on them)"),
    network: Network.optional().describe("none (default), user or tap, and an internet policy"),
    timeoutMs: z.number().int().positive().optional().describe("Lifetime in ms (default: the server's)"),
    onTimeout: z.enum(TIMEOUT_ACTIONS).optional().describe("delete (default) or pause when the lifetime ends"),
    coldBoot: z.boolean().optional(),
    backend: z.enum(BACKENDS).optional(),
    accel: z.enum(ACCELS).optional(),
    bootArgs: z.string().max(1024).optional(),
  })
  .strict();

export const Sandbox = z.object({
  vmId: z.string(),
  name: z.string().nullable(),
  status: z.string(),
  image: z.string(),
  imageId: z.string().nullable(),
  backend: z.string(),
  accel: z.string().nullable(),
  pid: z.number().nullable(),
  vcpuCount: z.number(),
  memSizeMib: z.number(),
  diskMode: z.string(),
  labels: StringMap,
  createdAt: z.string(),
  error: z.string().nullable(),
  expiresAt: z.string().nullable(),
  timeLeftMs: z.number().nullable(),
  onTimeout: z.string(),
  keep: z.boolean(),
  ownerPid: z.number().nullable(),
});

export const ErrorResponse = z.object({
  error: z.object({
    code: z.string(),
    message: z.string(),
    field: z.string().optional(),
    limit: z.string().optional(),
  }),
});

export const SandboxParams = z.object({ id: z.string().min(1).max(128) });

export const Timeout = z
  .object({ timeoutMs: z.number().int().positive().describe("New lifetime from now, in ms") })
  .strict();

export const Snapshot = z.object({
  id: z.string(),
  name: z.string().nullable(),
  vmId: z.string(),
  createdAt: z.string(),
  sizeBytes: z.number(),
  backend: z.string(),
  parentId: z.string().nullable(),
  temporary: z.boolean(),
});

export const SnapshotRequest = z.object({ name: z.string().max(64).optional() }).strict();
export const ForkRequest = z
  .object({
    count: z.number().int().min(1).max(16).default(1),
    timeoutMs: z.number().int().positive().optional(),
  })
  .strict();
