/** `smolvm image build|pull|list|inspect|rm|prune|import|export` */
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { ImageError } from "../errors.js";
import { images, mustFindImage } from "../images/api.js";
import { rootfsOf, shortId } from "../images/image-store.js";
import { PRESET_NAMES } from "../images/presets.js";
import { defaultRootfsPath } from "../images/store.js";
import { mustRun } from "../util/run.js";
import { parseEnv, printJson, progress, table } from "./output.js";

const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;

export function registerImages(program: Command): void {
  const image = program.command("image").description("images: presets, OCI images, imported root file systems");

  image
    .command("build <preset...>")
    .description(`build a preset image now (${PRESET_NAMES.join(", ")}) instead of on first use`)
    .option("--json", "print the images as JSON")
    .action(async (names: string[], o: { json?: boolean }) => {
      const out: unknown[] = [];
      for (const n of names) out.push((await images.build(n, { progress })) ?? { name: "base" });
      if (o.json) printJson(out);
    });

  image
    .command("pull <ref>")
    .description("pull an OCI image (docker.io/library/python:3.12-slim, or python:3.12-slim) into the store")
    .option("--insecure", "plain http (a registry on loopback; also SMOLVM_INSECURE_REGISTRIES=host:port,...)")
    .option("--platform <os/arch>", "platform to pick from a multi-platform image (default: this host's)")
    .option("--json", "print the image as JSON")
    .action(async (ref: string, o: { insecure?: boolean; platform?: string; json?: boolean }) => {
      let platform: { os: string; architecture: string; variant?: string } | undefined;
      if (o.platform) {
        const [os, architecture, variant] = o.platform.split("/");
        if (!os || !architecture) throw new ImageError(`--platform: expected os/arch, got ${o.platform}`);
        platform = { os, architecture, ...(variant ? { variant } : {}) };
      }
      const img = await images.pull(ref, { insecure: o.insecure, platform, progress });
      if (o.json) printJson(img);
      else process.stdout.write(`${img.id}\n`);
    });

  image
    .command("list")
    .alias("ls")
    .description("images in the store")
    .option("--json", "print JSON")
    .action((o: { json?: boolean }) => {
      const rows = images.list();
      if (o.json) {
        printJson(rows);
        return;
      }
      const lines = [
        { name: "base", id: "(built-in)", source: "builtin", size: "-", created: "-" },
        ...rows.map((r) => ({
          name: r.names.join(", ") || "-",
          id: shortId(r.id),
          source: r.source,
          size: mb(r.contentBytes),
          created: r.createdAt.slice(0, 19).replace("T", " "),
        })),
      ];
      process.stdout.write(`${table(lines, ["name", "id", "source", "size", "created"])}\n`);
    });

  image
    .command("inspect <image>")
    .description("an image's digests, sizes, config and users (VMs, snapshots, warm templates)")
    .option("--json", "print JSON")
    .action((name: string, o: { json?: boolean }) => {
      const v = images.inspect(name);
      if (o.json) {
        printJson(v);
        return;
      }
      for (const [k, val] of Object.entries(v)) {
        const text = typeof val === "object" && val !== null ? JSON.stringify(val) : String(val ?? "-");
        process.stdout.write(`${k.padEnd(15)} ${text}\n`);
      }
    });

  image
    .command("rm <image...>")
    .description("remove images (refused while a VM or snapshot uses one; its warm templates go with it)")
    .option("--json", "print what was removed as JSON")
    .action((names: string[], o: { json?: boolean }) => {
      const out: { image: string; id: string; removed: boolean }[] = [];
      for (const n of names) {
        const r = images.remove(n);
        out.push({ image: n, ...r });
        if (!o.json) process.stdout.write(`${r.removed ? `removed ${shortId(r.id)}` : `untagged ${n}`}\n`);
      }
      if (o.json) printJson(out);
    });

  image
    .command("prune")
    .description("remove unused warm templates and layers (and with --all, every image no VM or snapshot uses)")
    .option("--all", "also remove unused images")
    .option("--json", "print what was removed as JSON")
    .action((o: { all?: boolean; json?: boolean }) => {
      const r = images.prune({ all: o.all === true });
      if (o.json) {
        printJson(r);
        return;
      }
      process.stdout.write(
        `removed ${r.images.length} images, ${r.templates.length} warm templates, ${r.blobs.length} layers: ${mb(r.bytes)}\n`,
      );
    });

  image
    .command("import <path>")
    .description("import a root file system from a tar (plain, gzip or zstd) or a folder")
    .option("--name <name>", "name to give it")
    .option("-e, --env <KEY=VALUE...>", "environment of commands run in it")
    .option("--workdir <dir>", "default working directory")
    .option("-u, --user <user>", "default user")
    .option("--json", "print the image as JSON")
    .action(
      async (path: string, o: { name?: string; env?: string[]; workdir?: string; user?: string; json?: boolean }) => {
        const img = await images.import(path, {
          name: o.name,
          config: { env: parseEnv(o.env), workingDir: o.workdir, user: o.user },
          progress,
        });
        if (o.json) printJson(img);
        else process.stdout.write(`${img.id}\n`);
      },
    );

  image
    .command("export <image>")
    .description("write an image's root file system to a file: ext4 (default) or a tar")
    .requiredOption("-o, --output <file>", "where to write it")
    .option("--tar", "a tar of its files instead of the ext4 image")
    .action(async (name: string, o: { output: string; tar?: boolean }) => {
      const src = name === "base" ? defaultRootfsPath() : rootfsOf(mustFindImage(name).id);
      const out = resolve(o.output);
      if (!o.tar) {
        copyFileSync(src, out); // the image is sparse; so is the copy where the file system supports it
        return;
      }
      if (process.getuid?.() !== 0) {
        throw new ImageError(
          "export --tar needs root (debugfs can only keep owners and device files as root); export the ext4 image instead",
        );
      }
      // debugfs reads the ext4 image without mounting it; tar keeps owners and modes as numbers
      const dir = mkdtempSync(join(tmpdir(), "smolvm-export-"));
      try {
        await mustRun("debugfs", ["-R", `rdump / ${dir}`, src]);
        await mustRun("tar", ["--numeric-owner", "--exclude=./lost+found", "-C", dir, "-cf", out, "."]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
}
