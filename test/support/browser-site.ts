/** What the browser tests share: a site served inside the guest, target ids, and a check of a screenshot. */
import assert from "node:assert/strict";
import { after, before } from "node:test";
import { SmolVM } from "../../src/index.js";
import { decodePng, distinctColours, shareOf } from "./pixels.js";

/** A site inside the guest: a sign-in form whose POST sets a random session cookie, and a page showing the cookie. */
export const SITE = `
import http.server, secrets, urllib.parse
class H(http.server.BaseHTTPRequestHandler):
    def page(self, title, body):
        b = ("<!doctype html><title>%s</title><body style='margin:0;background:#3366cc;color:#fff;font:24px sans-serif'>%s</body>" % (title, body)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_GET(self):
        if self.path.startswith("/me"):
            self.page("Me", "<p id=who>%s</p>" % self.headers.get("Cookie", ""))
        else:
            self.page("Sign in", "<h1>Sign in</h1><form method=post action=/login><input id=user name=user><button id=go type=submit>Go</button></form>")
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        user = urllib.parse.parse_qs(self.rfile.read(n).decode()).get("user", [""])[0]
        self.send_response(303)
        self.send_header("Location", "/me")
        self.send_header("Set-Cookie", "session=%s-%s; Path=/" % (user, secrets.token_hex(8)))
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8000), H).serve_forever()
`;
export const FORM = "http://127.0.0.1:8000/form";
export const BLUE = [0x33, 0x66, 0xcc] as const;

export async function startSite(vm: SmolVM): Promise<void> {
  await vm.files.write("/srv/site.py", SITE);
  await vm.processes.start(["python3", "/srv/site.py"]);
  const r = await vm.run(
    "for i in $(seq 300); do grep -q ':1F40 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.1; done; exit 1",
  );
  assert.equal(r.exitCode, 0, "the guest's site listens");
}

/** Page target ids as DevTools lists them. */
export async function targetIds(cdpUrl: string): Promise<string[]> {
  const list = (await (await fetch(`${cdpUrl}/json/list`)).json()) as { id: string; type: string }[];
  return list.filter((t) => t.type === "page").map((t) => t.id);
}

export function assertBlueViewport(png: Buffer, width: number, height: number): void {
  const img = decodePng(png);
  assert.deepEqual([img.width, img.height], [width, height], "a PNG of the viewport's size");
  assert.ok(distinctColours(img) > 2, "not blank: text and background");
  assert.ok(shareOf(img, ...BLUE) > 0.5, "the page's background fills most of it");
}

/** A browser VM for a test file: created with its browser started and the site running, deleted after the file. */
export function browserVmWithSite(): () => SmolVM {
  let vm: SmolVM | undefined;
  before(async () => {
    vm = await SmolVM.create({ image: "browser" });
    await vm.browser.start();
    await startSite(vm);
  });
  after(async () => {
    await vm?.delete();
  });
  return () => vm as SmolVM;
}
