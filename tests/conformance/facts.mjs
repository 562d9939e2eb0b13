// An ES module: import.meta, top-level await and the lack of require, in every mode.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const portable = (text) => String(text).split(here).join("<dir>");
const answer = await Promise.resolve(42);
console.log(JSON.stringify({
  url: portable(import.meta.url),
  argv: process.argv.map(portable),
  requireType: typeof require,
  moduleType: typeof module,
  topLevelAwait: answer,
  stdin: readFileSync(0, "utf8"),
}));
