/**
 * envd's `process.Process` service on SmolVM: Start (a background process followed to its end: start event with
 * the pid, output, end event with the exit code), Connect, List, SendInput, StreamInput, CloseStdin, SendSignal.
 * Start with `pty` runs the program on a guest terminal (its output is `pty` data; Update resizes it).
 */
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { SmolVM } from "../../sandbox/smolvm.js";
import type { ServerContext } from "../app.js";
import { basicUser, envdSandbox } from "./access.js";
import type { Process, ProcessInput, ProcessSelector, StreamInputRequest } from "./gen/process/process_pb.js";
import { effectiveUser, guestPath, homeOf } from "./paths.js";
import type { ProcessRegistry, ProcessSession, Subscriber } from "./process-sessions.js";
import { streaming, toConnectError, unary } from "./rpc-errors.js";

const MAX_ARGS = 4096;
const MAX_ARG_BYTES = 1 << 20;
/** envd's Keepalive-Ping-Interval header is in seconds. */
export function keepaliveMs(ctx: HandlerContext): number {
  const s = Number(ctx.requestHeader.get("keepalive-ping-interval"));
  return Number.isFinite(s) && s >= 1 ? Math.min(s, 300) * 1000 : 50_000;
}

export function sandboxOf(ctx: ServerContext, h: HandlerContext): Promise<SmolVM> {
  return envdSandbox(ctx, (name) => h.requestHeader.get(name));
}

async function* events(session: ProcessSession, sub: Subscriber, h: HandlerContext) {
  try {
    yield { event: { event: { case: "start" as const, value: { pid: session.pid } } } };
    const idle = keepaliveMs(h);
    for (;;) {
      const ev = await sub.next(idle, h.signal);
      if (ev === null) {
        yield { event: { event: { case: "keepalive" as const, value: {} } } };
        continue;
      }
      yield { event: ev };
      if (ev.event?.case === "end") return;
    }
  } finally {
    session.unsubscribe(sub);
  }
}

function selected(registry: ProcessRegistry, vm: SmolVM, sel: ProcessSelector | undefined): ProcessSession {
  const s =
    sel?.selector.case === "pid"
      ? registry.get(vm, sel.selector.value)
      : sel?.selector.case === "tag"
        ? registry.byTag(vm, sel.selector.value)
        : undefined;
  if (!s) throw new ConnectError("process not found (or not started through this API)", Code.NotFound);
  return s;
}

async function writeInput(session: ProcessSession, input: ProcessInput | undefined): Promise<void> {
  if (input?.input.case !== "stdin" && input?.input.case !== "pty") return;
  if (session.pty) {
    await session.pty.write(Buffer.from(input.input.value));
    return;
  }
  const stdin = session.stdin;
  if (!stdin || stdin.writableEnded || stdin.destroyed) {
    throw new ConnectError("stdin is not open for this process (start it with stdin: true)", Code.FailedPrecondition);
  }
  if (!stdin.write(Buffer.from(input.input.value))) {
    await new Promise<void>((resolve) => {
      const done = () => {
        stdin.off("drain", done);
        stdin.off("close", done);
        resolve();
      };
      stdin.once("drain", done);
      stdin.once("close", done);
    });
  }
}

export function processService(ctx: ServerContext, registry: ProcessRegistry): ServiceImpl<typeof Process> {
  return {
    start: streaming(async function* (req, h) {
      const vm = await sandboxOf(ctx, h);
      const p = req.process;
      if (!p?.cmd) throw new ConnectError("process.cmd is required", Code.InvalidArgument);
      const argBytes = [p.cmd, ...p.args].reduce((n, a) => n + Buffer.byteLength(a), 0);
      if (p.args.length > MAX_ARGS || argBytes > MAX_ARG_BYTES) {
        throw new ConnectError("the command line is too long", Code.InvalidArgument);
      }
      const user = basicUser(h.requestHeader.get("authorization"));
      const home = homeOf(effectiveUser(vm, user));
      // envd's default working directory is the user's home
      const cwd = p.cwd ? guestPath(p.cwd, home) : (await vm.files.exists(home)) ? home : undefined;
      const config = { cmd: p.cmd, args: p.args, envs: p.envs, cwd };
      const size = req.pty?.size;
      const { session, subscriber } = req.pty
        ? await registry.startPty(vm, config, { user, cols: size?.cols || 80, rows: size?.rows || 24, tag: req.tag })
        : await registry.start(vm, config, { user, stdin: req.stdin === true, tag: req.tag });
      // the request's deadline (the SDK's `timeoutMs`) is the command's: it is killed then, whether or not the
      // stream is still there (Connect's deadline, or the client's, may end it first)
      const deadline = h.timeoutMs();
      const kill = () => {
        if (!session.ended) (session.pty ? session.pty.kill(9) : vm.processes.kill(session.pid, 9)).catch(() => {});
      };
      const timer = deadline !== undefined ? setTimeout(kill, Math.max(0, deadline)).unref() : undefined;
      yield* events(session, subscriber, h);
      clearTimeout(timer); // it ended
    }),

    connect: streaming(async function* (req, h) {
      const vm = await sandboxOf(ctx, h);
      const sel = req.process?.selector;
      let session: ProcessSession | null | undefined;
      if (sel?.case === "pid") session = await registry.attach(vm, sel.value);
      else if (sel?.case === "tag") session = registry.byTag(vm, sel.value);
      if (!session) throw new ConnectError("process not found", Code.NotFound);
      yield* events(session, session.subscribe(), h);
    }),

    list: unary(async (_req, h) => {
      const vm = await sandboxOf(ctx, h);
      const running = (await vm.processes.list()).filter((p) => p.running);
      return {
        processes: running.map((p) => {
          const s = registry.get(vm, p.pid);
          return {
            pid: p.pid,
            config: s?.config ?? { cmd: p.command, args: [], envs: {} },
            ...(s?.tag ? { tag: s.tag } : {}),
          };
        }),
      };
    }),

    sendInput: unary(async (req, h) => {
      const vm = await sandboxOf(ctx, h);
      await writeInput(selected(registry, vm, req.process), req.input);
      return {};
    }),

    streamInput: async (reqs: AsyncIterable<StreamInputRequest>, h) => {
      try {
        const vm = await sandboxOf(ctx, h);
        let session: ProcessSession | null = null;
        for await (const r of reqs) {
          if (r.event.case === "start") session = selected(registry, vm, r.event.value.process);
          else if (r.event.case === "data") {
            if (!session) throw new ConnectError("the first message must select the process", Code.InvalidArgument);
            await writeInput(session, r.event.value.input);
          }
        }
        return {};
      } catch (e) {
        throw toConnectError(e);
      }
    },

    closeStdin: unary(async (req, h) => {
      const vm = await sandboxOf(ctx, h);
      const session = selected(registry, vm, req.process);
      if (!session.stdin) throw new ConnectError("stdin is not open for this process", Code.FailedPrecondition);
      session.stdin.end();
      return {};
    }),

    sendSignal: unary(async (req, h) => {
      const vm = await sandboxOf(ctx, h);
      const sel = req.process?.selector;
      const pid =
        sel?.case === "pid" ? sel.value : sel?.case === "tag" ? registry.byTag(vm, sel.value)?.pid : undefined;
      if (!pid) throw new ConnectError("process not found", Code.NotFound);
      const signal = req.signal === 15 ? 15 : 9;
      const pty = registry.get(vm, pid)?.pty;
      await (pty ? pty.kill(signal) : vm.processes.kill(pid, signal));
      return {};
    }),

    update: unary(async (req, h) => {
      const vm = await sandboxOf(ctx, h);
      const session = selected(registry, vm, req.process);
      const size = req.pty?.size;
      if (!size) return {};
      if (!session.pty) throw new ConnectError("the process has no terminal to resize", Code.FailedPrecondition);
      await session.pty.resize({ cols: size.cols, rows: size.rows });
      return {};
    }),
  };
}
