/**
 * Presets: root file systems built from Debian's packages with mmdebstrap (reachable wherever apt is), on first use,
 * then kept in the image store like any image. `base` is the built-in busybox image (small, fastest to start).
 */
import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { ImageError } from "../errors.js";
import { type Progress, runHost, silent, which } from "../util/run.js";
import { finishImage } from "./build.js";
import { getImage, IMAGE_FORMAT, type ImageRecord, recipeId, refTarget, setRef, stagingDir } from "./image-store.js";
import { RootfsBuilder } from "./unpack.js";

/** Bump when a preset's recipe changes meaning without its package list changing. */
const PRESET_VERSION = 1;
const SUITE = "bookworm";

interface Preset {
  packages: string[];
  /** Commands run on the finished tree by mmdebstrap (`$1` is the root). */
  hooks: string[];
  env: Record<string, string>;
  description: string;
}

const COMMON_HOOKS = [
  // apt's package lists are for `apt-get update` to refill; they are most of the size otherwise
  'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin',
  'printf "127.0.0.1 localhost\\n::1 localhost\\n" > "$1"/etc/hosts',
];

export const PRESETS: Record<string, Preset> = {
  python: {
    packages: ["python3", "python3-pip", "python3-venv", "ca-certificates", "curl", "git"],
    // a sandbox is the environment: `pip install` goes to the system Python without --break-system-packages
    hooks: ['rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED'],
    env: { PYTHONUNBUFFERED: "1" },
    description: "Debian 12 with python3, pip, venv, ca-certificates, curl and git",
  },
  node: {
    packages: ["nodejs", "npm", "ca-certificates", "curl", "git"],
    hooks: [],
    env: {},
    description: "Debian 12 with Node.js and npm, ca-certificates, curl and git",
  },
  browser: {
    // Chromium driven over CDP (src/sandbox/browser.ts); Xvfb, x11vnc and noVNC for the headful mode; fonts enough
    // for common pages (Liberation is metric-compatible with Arial, Times and Courier; DejaVu covers most scripts)
    packages: [
      "chromium",
      "xvfb",
      "x11vnc",
      "novnc",
      "websockify",
      "fonts-liberation2",
      "fonts-dejavu-core",
      "ca-certificates",
    ],
    hooks: [],
    env: {},
    description: "Debian 12 with Chromium, Xvfb, x11vnc and noVNC (vm.browser)",
  },
};

export const PRESET_NAMES = ["base", ...Object.keys(PRESETS)];
export const presetRef = (name: string) => `preset:${name}`;

/** Smaller images: documentation and translations are not installed (copyright files are). */
const DPKG_OPTS = [
  "path-exclude=/usr/share/man/*",
  "path-exclude=/usr/share/doc/*",
  "path-include=/usr/share/doc/*/copyright",
  "path-exclude=/usr/share/info/*",
  "path-exclude=/usr/share/locale/*",
];

/** The apt sources this host uses, handed to mmdebstrap as its mirror (its own defaults may be unreachable). */
function aptSources(): string {
  for (const f of ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"]) {
    if (existsSync(f) && readFileSync(f, "utf8").trim()) return f;
  }
  throw new ImageError("no apt sources found (/etc/apt/sources.list.d/debian.sources): presets are built with apt");
}

function recipe(name: string, p: Preset): unknown {
  let sources = "";
  try {
    sources = readFileSync(aptSources(), "utf8");
  } catch {
    // reported when building
  }
  return { preset: name, v: PRESET_VERSION, format: IMAGE_FORMAT, suite: SUITE, p, dpkg: DPKG_OPTS, sources };
}

/** Build (or find) a preset's image. Prints progress: this takes a minute or two the first time. */
export async function ensurePreset(name: string, progress: Progress = silent): Promise<ImageRecord> {
  const p = Object.hasOwn(PRESETS, name) ? PRESETS[name] : undefined;
  if (!p) throw new ImageError(`unknown preset ${JSON.stringify(name)}; presets: ${PRESET_NAMES.join(", ")}`);
  const id = recipeId(recipe(name, p));
  const built = getImage(id); // made from the current recipe (its name is written again if a kill lost it)
  if (built) {
    if (refTarget(presetRef(name)) !== id) setRef(presetRef(name), id);
    return built;
  }
  const mm = which("mmdebstrap");
  if (!mm) {
    throw new ImageError(
      `the ${name} preset is built with mmdebstrap: install it (apt-get install mmdebstrap), or run 'smolvm setup'`,
    );
  }
  const staging = stagingDir(id);
  try {
    const tar = join(staging, "rootfs.tar");
    progress(
      `building the ${name} image from Debian packages (${p.packages.join(", ")}); this takes a minute or two, once`,
    );
    const args = [
      "--variant=minbase",
      `--include=${p.packages.join(",")}`,
      ...DPKG_OPTS.map((o) => `--dpkgopt=${o}`),
      ...[...COMMON_HOOKS, ...p.hooks].map((h) => `--customize-hook=${h}`),
      SUITE,
      tar,
      aptSources(),
    ];
    if (process.getuid?.() !== 0) args.unshift("--mode=unshare");
    const r = await runHost(mm, args, {
      timeoutMs: 30 * 60_000,
      // mmdebstrap's own steps ("I: downloading packages with apt...") are the progress of the slow part
      onStderrLine: (l) => {
        if (l.startsWith("I: ")) progress(`${name}: ${l.slice(3)}`);
      },
    });
    if (r.code !== 0) {
      const tail = r.stderr.trim().split("\n").slice(-8).join("\n");
      throw new ImageError(`building the ${name} preset failed (mmdebstrap exit ${r.code}):\n${tail}`);
    }
    progress(`converting the ${name} image to ext4`);
    const tree = join(staging, "tree");
    mkdirSync(tree);
    const builder = new RootfsBuilder(tree, { progress });
    await builder.applyLayer(tar, `${name} (mmdebstrap)`);
    const done = builder.finish();
    rmSync(tar, { force: true });
    const facts = {
      id,
      source: "preset" as const,
      origin: presetRef(name),
      manifestDigest: null,
      layers: [],
      platform: `linux/${process.arch === "arm64" ? "arm64" : "amd64"}`,
      config: { env: p.env },
    };
    const rec = await finishImage(staging, tree, facts, presetRef(name), {
      fixups: done.fixups,
      label: `smolvm-${name}`,
      progress,
    });
    progress(`${name} image ready (${Math.round(rec.contentBytes / 1e6)} MB of files)`);
    return rec;
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}
