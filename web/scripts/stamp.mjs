// Records a hash of the sources in the build (BUILD.json), so a test can tell that the shipped files were
// built from these sources. The same algorithm is in aicm/http/console.py (sources_digest).
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";

const root = resolve(import.meta.dirname, "..");
const SOURCES = ["index.html", "graphiql.html", "package.json", "package-lock.json", "tsconfig.json", "vite.config.ts", "src"];

function walk(path, out) {
  if (statSync(path).isDirectory()) {
    for (const name of readdirSync(path)) walk(join(path, name), out);
  } else {
    out.push(path);
  }
}

const files = [];
for (const name of SOURCES) walk(join(root, name), files);
const digest = createHash("sha256");
for (const rel of files.map((f) => relative(root, f).split("\\").join("/")).sort()) {
  const body = createHash("sha256").update(readFileSync(join(root, rel))).digest("hex");
  digest.update(`${rel}\0${body}\n`);
}
const out = resolve(root, "../aicm/web/static/BUILD.json");
writeFileSync(out, JSON.stringify({ sources_sha256: digest.digest("hex") }, null, 2) + "\n");
console.log(`stamped ${out}`);
