// Writes to stdout and stderr in turn, as a program's progress and its warnings do, then fails.
// Run with both on one pipe (`2>&1`), what it wrote must come in the order it wrote it.
"use strict";
const fs = require("fs");
for (let i = 0; i < 200; i++) {
  console.log("out", i);
  console.error("err", i);
}
process.stdout.write("no newline, then ");
console.error("stderr's line");
const [out, err] = [fs.fstatSync(1), fs.fstatSync(2)];
console.log("one file:", out.dev === err.dev && out.ino === err.ino);
throw new Error("failed at the end");
