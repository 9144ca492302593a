/**
 * Why a VM ended when nobody asked it to: from what its proxy recorded (the last shutdown or panic event, or a
 * guest that broke the protocol), the exit status its supervisor recorded, and the last lines of its console.
 */
import type { ExitInfo } from "../backends/types.js";
import { tailFile } from "../sandbox/console-log.js";

const SIGNALS: Record<number, string> = { 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM", 31: "SIGSYS" };

export interface EndState {
  /** stopped: the guest powered itself off; crashed: anything else (a kill, an exit status, a panic, bad protocol). */
  status: "stopped" | "crashed";
  reason: string;
}

/** The panic line of a console log, if the guest kernel panicked. */
export function panicLine(consoleText: string): string | null {
  const m = /Kernel panic - not syncing:[^\n]*/.exec(consoleText);
  return m ? m[0].trim().slice(0, 300) : null;
}

export function describeEnd(info: ExitInfo | null, consoleLog: string | undefined): EndState {
  const tail = consoleLog ? tailFile(consoleLog, 16 << 10) : "";
  const panic = panicLine(tail);
  const lastLines = tail
    .split("\n")
    .map((l) => l.replace(/[^\x20-\x7e\t]/g, "?").trimEnd())
    .filter(Boolean)
    .slice(-5)
    .join(" | ");
  const withConsole = (s: string) => (lastLines ? `${s}; last console lines: ${lastLines}` : s);
  if (info?.reason === "guest-protocol") {
    return {
      status: "crashed",
      reason: "the guest broke the agent protocol (it sent a malformed frame): the VM was cut off from its clients",
    };
  }
  if (panic || /GUEST_PANICKED|guest-panic/.test(info?.event ?? "")) {
    return { status: "crashed", reason: `the guest kernel panicked${panic ? `: ${panic}` : ""}` };
  }
  if (info?.event === "SHUTDOWN guest-shutdown" && (info.code ?? 0) === 0) {
    return { status: "stopped", reason: "the guest powered itself off" };
  }
  if (info?.signal) {
    const name = SIGNALS[info.signal] ?? `signal ${info.signal}`;
    const why = info.signal === 31 ? " (a system call its sandbox forbids)" : "";
    return { status: "crashed", reason: withConsole(`the VMM was killed by ${name}${why}`) };
  }
  if (info?.code) return { status: "crashed", reason: withConsole(`the VMM exited with code ${info.code}`) };
  if (info?.event === "SHUTDOWN guest-reset") {
    return { status: "crashed", reason: withConsole("the guest rebooted, which ends a SmolVM VM") };
  }
  if (info?.event) return { status: "crashed", reason: withConsole(`the VMM ended (${info.event})`) };
  return { status: "crashed", reason: withConsole("the VMM process is gone and recorded no exit status (killed?)") };
}
