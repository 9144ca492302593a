// Loaded with `node --import`: prints every module URL the program resolves, to stderr (for start-up tests).
import { register } from "node:module";

register(
  "data:text/javascript," +
    encodeURIComponent(`
      export async function resolve(spec, ctx, next) {
        const r = await next(spec, ctx);
        process.stderr.write("import " + r.url + "\\n");
        return r;
      }`),
);
