/**
 * The guest side of `vm.browser`: the launcher script that runs Chromium (and, headful, Xvfb, x11vnc and noVNC)
 * inside the VM, the flags it runs with, and the state file that tells a later client (or a clone restored from a
 * snapshot or a warm template) which browser is running. Everything here goes through two calls, `exec` and
 * `start`, so it works with the VM facade and with the bare agent client a warm template is captured through.
 */
import type { AgentClient } from "../agent/client.js";
import { ConfigError, SmolVMError } from "../errors.js";
import { type CommandResult, runCommand, startDetached } from "./commands.js";

/** Bump when the launcher or the flags change: a warm template with a browser of another version is rebuilt. */
export const BROWSER_LAUNCHER_VERSION = 1;
export const CDP_PORT = 9222;
export const VNC_PORT = 5900;
export const NOVNC_PORT = 6080;
export const STATE_DIR = "/run/smolvm-browser";
const PROFILE_DIR = "/var/lib/smolvm-browser/profile";
export const DEFAULT_VIEWPORT = { width: 1280, height: 720 } as const;

export interface Viewport {
  width: number;
  height: number;
}

/** What `/run/smolvm-browser/state.json` records of the browser running in the guest. */
export interface BrowserState {
  v: number;
  /** The launcher's pid (a background process of the agent; its process group holds every browser process). */
  pid: number;
  headless: boolean;
  viewport: Viewport;
  args: string[];
  /** Launched while a warm template was captured (every VM restored from it starts with this browser). */
  template: boolean;
  /** The VM that gave this browser its own page targets (a template's browser is adopted by the first start()). */
  adoptedBy: string | null;
  startedAt: string;
}

/**
 * Memory a VM needs for Chromium with this viewport: 1024 MiB up to 1920x1080 (browser, GPU process in software,
 * one renderer of a common page), 256 MiB more per further 2 megapixels (raster and compositor buffers). Measured and
 * explained in docs/BROWSER.md.
 */
export function minMemoryMib(v: Viewport): number {
  const extra = Math.max(0, v.width * v.height - 1920 * 1080);
  return 1024 + 256 * Math.ceil(extra / 2_000_000);
}

export function checkViewport(v: unknown): Viewport {
  if (v === undefined) return { ...DEFAULT_VIEWPORT };
  const o = v as Partial<Viewport>;
  for (const k of ["width", "height"] as const) {
    const n = o?.[k];
    if (typeof n !== "number" || !Number.isInteger(n) || n < 200 || n > 7680) {
      throw new ConfigError(`viewport.${k}`, `must be an integer from 200 to 7680, got ${JSON.stringify(n)}`);
    }
  }
  return { width: o.width as number, height: o.height as number };
}

/** Flags of our own that a caller's `args` may not override (they are what the SDK relies on). */
const RESERVED = ["--remote-debugging-port", "--remote-debugging-pipe", "--user-data-dir", "--headless"];

export function checkArgs(args: unknown): string[] {
  if (args === undefined) return [];
  if (!Array.isArray(args) || args.length > 64) throw new ConfigError("args", "must be an array of at most 64 flags");
  return args.map((a, i) => {
    if (typeof a !== "string" || !/^--[a-z0-9-]+(=[^\0\n]{0,4096})?$/i.test(a)) {
      throw new ConfigError(`args[${i}]`, `must be a Chromium flag like "--lang=de", got ${JSON.stringify(a)}`);
    }
    if (RESERVED.some((r) => a === r || a.startsWith(`${r}=`))) {
      throw new ConfigError(`args[${i}]`, `${a.split("=")[0]} is set by vm.browser and cannot be changed`);
    }
    return a;
  });
}

/** Chromium's command line. */
export function chromiumArgs(o: { headless: boolean; viewport: Viewport; args: string[] }): string[] {
  return [
    `--remote-debugging-port=${CDP_PORT}`,
    `--user-data-dir=${PROFILE_DIR}`,
    // the VM is the sandbox: Chromium's own needs user namespaces for a root user (docs/BROWSER.md)
    "--no-sandbox",
    "--no-first-run",
    "--no-default-browser-check",
    // nothing phones home or updates itself: a sandbox's traffic is the page's
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--password-store=basic",
    "--mute-audio",
    "--disable-gpu",
    `--window-size=${o.viewport.width},${o.viewport.height}`,
    ...(o.headless ? ["--headless=new"] : ["--kiosk", "--window-position=0,0"]),
    ...o.args,
    "about:blank",
  ];
}

/**
 * The launcher: `sh -c SCRIPT sh WIDTH HEIGHT HEADLESS CHROMIUM-ARGS...`. It starts the display stack when headful,
 * runs Chromium, records its pid, and when Chromium ends records its exit status and stops the rest.
 */
const LAUNCHER = `
d=${STATE_DIR}
w=$1 h=$2 headless=$3
shift 3
mkdir -p "$d" && rm -f "$d/exit" "$d/chromium.pid"
kids=""
if [ "$headless" = 0 ]; then
  rm -f /tmp/.X11-unix/X99 /tmp/.X99-lock
  # Chromium's full-screen window on an X server with no window manager is one pixel short of the screen in both
  # directions: the screen is a pixel larger and VNC shows the page's w x h
  Xvfb :99 -screen 0 "$((w + 1))x$((h + 1))x24" -nolisten tcp >"$d/xvfb.log" 2>&1 &
  kids="$kids $!"
  i=0
  while [ ! -S /tmp/.X11-unix/X99 ]; do
    i=$((i + 1))
    if [ $i -gt 600 ]; then echo "Xvfb did not start: $(tail -c 400 "$d/xvfb.log")" >"$d/exit"; kill $kids; exit 1; fi
    sleep 0.1
  done
  export DISPLAY=:99
  x11vnc -display :99 -clip "\${w}x\${h}+0+0" -rfbport ${VNC_PORT} -localhost -forever -shared -nopw -quiet >"$d/x11vnc.log" 2>&1 &
  kids="$kids $!"
  websockify --web /usr/share/novnc 127.0.0.1:${NOVNC_PORT} 127.0.0.1:${VNC_PORT} >"$d/novnc.log" 2>&1 &
  kids="$kids $!"
fi
# one browser per VM, and the previous one is stopped: its profile lock (naming the host it ran on, which in a VM
# restored from a template is the template's) would keep this one from starting
rm -f ${PROFILE_DIR}/SingletonLock ${PROFILE_DIR}/SingletonSocket ${PROFILE_DIR}/SingletonCookie
chromium "$@" >"$d/chromium.log" 2>&1 &
c=$!
echo $c >"$d/chromium.pid"
wait $c
echo "status $?" >"$d/exit"
[ -n "$kids" ] && kill $kids 2>/dev/null
exit 0
`;

/** The two things the guest side needs from whoever drives the VM. */
export interface GuestOps {
  exec(cmd: string[], opts?: { timeoutMs?: number; stdin?: string }): Promise<CommandResult>;
  start(cmd: string[]): Promise<number>;
}

export function agentOps(c: AgentClient): GuestOps {
  return {
    exec: (cmd, opts = {}) => runCommand(c, cmd, {}, opts),
    start: (cmd) => startDetached(c, cmd, {}),
  };
}

const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

export async function writeState(g: GuestOps, s: BrowserState): Promise<void> {
  const r = await g.exec(["sh", "-c", `mkdir -p ${STATE_DIR} && cat > ${STATE_DIR}/state.json`], {
    stdin: JSON.stringify(s),
    timeoutMs: 30_000,
  });
  if (r.exitCode !== 0) throw new SmolVMError(`cannot write the browser's state in the guest: ${r.stderr.trim()}`);
}

/** What the guest says of the launched browser: alive, or ended (with its exit line and the log's last lines). */
export interface Liveness {
  alive: boolean;
  exit: string | null;
  logTail: string;
  oom: boolean;
}

const SEP = "\n--smolvm--\n";

/**
 * The state file (null when no browser was started in this guest, or the file is not ours) and whether Chromium
 * (the pid the launcher recorded) still runs; when not, why it ended. One command in the guest.
 */
export async function inspect(g: GuestOps): Promise<{ state: BrowserState | null; live: Liveness }> {
  const script = `d=${STATE_DIR}
cat "$d/state.json" 2>/dev/null
printf '${SEP.replaceAll("\n", "\\n")}'
p=$(cat "$d/chromium.pid" 2>/dev/null)
if [ -n "$p" ] && [ -d /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null; then echo alive; exit 0; fi
echo ended
cat "$d/exit" 2>/dev/null || echo "status unknown"
printf '${SEP.replaceAll("\n", "\\n")}'
dmesg 2>/dev/null | grep -ci 'killed process.*chrom' || true
printf '${SEP.replaceAll("\n", "\\n")}'
tail -c 2000 "$d/chromium.log" 2>/dev/null`;
  const r = await g.exec(["sh", "-c", script], { timeoutMs: 30_000 });
  const [json = "", head = "", oomCount = "0", log = ""] = r.stdout.split(SEP);
  let state: BrowserState | null = null;
  try {
    const s = JSON.parse(json.slice(0, 65536)) as BrowserState;
    if (s && s.v === BROWSER_LAUNCHER_VERSION && Number.isInteger(s.pid) && s.pid > 0) state = s;
  } catch {
    // no browser, or not a state file of ours
  }
  const lines = head.trim().split("\n");
  if (lines[0] === "alive") return { state, live: { alive: true, exit: null, logTail: "", oom: false } };
  return { state, live: { alive: false, exit: lines[1] ?? null, logTail: log.trim(), oom: Number(oomCount) > 0 } };
}

/** A one-line reason for a browser that ended, from its exit status, the kernel's OOM report and its log. */
export function endReason(l: Liveness, memSizeMib: number): string {
  const m = /^status (\d+)/.exec(l.exit ?? "");
  const code = m ? Number(m[1]) : null;
  // the most telling line: a fatal or error line of Chromium's own (not D-Bus noise), else the last one
  const lines = l.logTail.split("\n").filter((x) => x.trim() && !/dbus|Fontconfig|Xlib/i.test(x));
  const telling = lines.filter((x) => /FATAL|in use by another|ERROR/.test(x));
  const lastLine = (telling.at(-1) ?? lines.at(-1) ?? "").slice(0, 300);
  if (l.oom) {
    return `Chromium was killed by the guest kernel's OOM killer: the VM has ${memSizeMib} MiB; give it more (memSizeMib, docs/BROWSER.md)`;
  }
  if (code !== null && code > 128)
    return `Chromium was killed by signal ${code - 128}${lastLine ? `; last log line: ${lastLine}` : ""}`;
  if (code !== null) return `Chromium exited with status ${code}${lastLine ? `: ${lastLine}` : ""}`;
  return (l.exit ?? "Chromium is not running").slice(0, 500);
}

/**
 * Launch the browser in the guest and wait until its DevTools port listens (or it ends: then the error says why).
 * Returns the launcher's pid. `memSizeMib` is only for the error message.
 */
export async function launch(
  g: GuestOps,
  o: { headless: boolean; viewport: Viewport; args: string[]; template: boolean; vmId: string | null },
  memSizeMib: number,
  timeoutMs = 180_000,
): Promise<BrowserState> {
  const { width, height } = o.viewport;
  const argv = chromiumArgs(o);
  const pid = await g.start([
    "sh",
    "-c",
    LAUNCHER,
    "sh",
    String(width),
    String(height),
    o.headless ? "1" : "0",
    ...argv,
  ]);
  const state: BrowserState = {
    v: BROWSER_LAUNCHER_VERSION,
    pid,
    headless: o.headless,
    viewport: { width, height },
    args: o.args,
    template: o.template,
    adoptedBy: o.vmId,
    startedAt: new Date().toISOString(),
  };
  await writeState(g, state);
  // DevTools listening on 127.0.0.1:9222 is a LISTEN (0A) row for 0100007F:2406 in /proc/net/tcp; headful also
  // waits for x11vnc (5900 = 170C) and websockify (6080 = 17C0)
  const ports = [CDP_PORT, ...(o.headless ? [] : [VNC_PORT, NOVNC_PORT])];
  const want = ports.map((p) => `:${p.toString(16).toUpperCase().padStart(4, "0")} 00000000:0000 0A`);
  const wait = `d=${STATE_DIR}; end=$(($(date +%s) + ${Math.ceil(timeoutMs / 1000)}))
while :; do
  ok=1
  for w in ${want.map(shq).join(" ")}; do grep -q "$w" /proc/net/tcp || ok=0; done
  [ $ok = 1 ] && exit 0
  [ -e "$d/exit" ] && exit 3
  [ $(date +%s) -gt $end ] && exit 4
  sleep 0.1
done`;
  const r = await g.exec(["sh", "-c", wait], { timeoutMs: timeoutMs + 30_000 });
  if (r.exitCode === 0) return state;
  const l = (await inspect(g)).live;
  if (r.exitCode === 4 && l.alive) {
    throw new SmolVMError(`Chromium did not open its DevTools port within ${timeoutMs / 1000} s (still starting?)`);
  }
  throw new SmolVMError(`the browser did not start: ${endReason(l, memSizeMib)}`);
}

/** Stop the browser the state file names (its launcher's whole process group) and remove the state. */
export async function stopInGuest(g: GuestOps, s: BrowserState | null): Promise<void> {
  const pid = s ? String(s.pid) : "";
  const script = `p=${shq(pid)}
c=$(cat ${STATE_DIR}/chromium.pid 2>/dev/null)
[ -n "$p" ] && kill -TERM -"$p" 2>/dev/null
[ -n "$c" ] && kill -TERM "$c" 2>/dev/null
i=0
while [ -n "$c" ] && [ -d /proc/$c ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -n "$p" ] && kill -KILL -"$p" 2>/dev/null
[ -n "$c" ] && kill -KILL "$c" 2>/dev/null
rm -rf ${STATE_DIR} /tmp/.X11-unix/X99 /tmp/.X99-lock
exit 0`;
  await g.exec(["sh", "-c", script], { timeoutMs: 30_000 });
}

const SETTLE = `prev=$(head -1 /proc/stat); n=0; quiet=0
while [ $n -lt 120 ]; do
  sleep 1; cur=$(head -1 /proc/stat)
  set -- $prev; pt=$(($2 + $3 + $4 + $5 + $6 + $7 + $8)); pi=$5
  set -- $cur; ct=$(($2 + $3 + $4 + $5 + $6 + $7 + $8)); ci=$5
  if [ $((ct - pt)) -gt 0 ] && [ $(((ci - pi) * 100 / (ct - pt))) -ge 90 ]; then quiet=$((quiet + 1)); else quiet=0; fi
  [ $quiet -ge 3 ] && exit 0
  prev=$cur; n=$((n + 1))
done`;

/** The warm template's step: a headless browser of the default viewport, running when the template is captured. */
export async function warmupBrowser(c: AgentClient, memSizeMib: number): Promise<void> {
  const g = agentOps(c);
  await launch(
    g,
    { headless: true, viewport: { ...DEFAULT_VIEWPORT }, args: [], template: true, vmId: null },
    memSizeMib,
  );
  // let its start-up work finish (renderers, first-run tasks): a template captured mid-work hands that work to
  // every clone. Settled: the guest 90% idle for three seconds in a row (at most two minutes).
  await g.exec(["sh", "-c", SETTLE], { timeoutMs: 200_000 });
}
