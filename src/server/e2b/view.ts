/** SmolVM sandboxes as E2B's API shows them. */
import type { VMInfo } from "../../sandbox/smolvm.js";
import { envdAccessToken } from "./access.js";
import { labelsToMetadata, TEMPLATE_LABEL } from "./metadata.js";

/**
 * The envd version this server speaks for (the SDKs gate features on it): 0.5.7 = process stdin close (0.5.2),
 * octet-stream uploads (0.5.7), no default user (0.4.0), recursive watching (0.1.4). Not 0.6.2+: file metadata is
 * not implemented, and below that version the SDK refuses it itself with a clear error.
 */
export const ENVD_VERSION = "0.5.7";
export const CLIENT_ID = "smolvm";

export type E2bState = "running" | "paused";

export function e2bState(info: VMInfo): E2bState | null {
  return info.status === "running" || info.status === "paused" ? info.status : null;
}

export function templateOf(info: VMInfo): string {
  return info.labels[TEMPLATE_LABEL] ?? info.image;
}

/** What create, connect and resume answer. */
export function createdSandbox(info: VMInfo, serverToken: string) {
  return {
    sandboxID: info.vmId,
    templateID: templateOf(info),
    clientID: CLIENT_ID,
    envdVersion: ENVD_VERSION,
    envdAccessToken: envdAccessToken(serverToken, info.vmId),
    trafficAccessToken: null,
    domain: null,
    ...(info.name ? { alias: info.name } : {}),
  };
}

function times(info: VMInfo) {
  return { startedAt: info.createdAt, endAt: info.expiresAt ?? new Date().toISOString() };
}

/** An entry of `GET /sandboxes` and `GET /v2/sandboxes`. */
export function listedSandbox(info: VMInfo) {
  return {
    sandboxID: info.vmId,
    templateID: templateOf(info),
    clientID: CLIENT_ID,
    ...(info.name ? { alias: info.name } : {}),
    ...times(info),
    cpuCount: info.vcpuCount,
    memoryMB: info.memSizeMib,
    diskSizeMB: 0,
    metadata: labelsToMetadata(info.labels),
    state: e2bState(info) ?? "paused",
    envdVersion: ENVD_VERSION,
    volumeMounts: [],
  };
}

/** `GET /sandboxes/{id}`. */
export function detailedSandbox(info: VMInfo, serverToken: string) {
  return {
    ...listedSandbox(info),
    envdAccessToken: envdAccessToken(serverToken, info.vmId),
    domain: null,
    lifecycle: { onTimeout: info.onTimeout === "pause" ? "pause" : "kill", autoResume: false },
  };
}
