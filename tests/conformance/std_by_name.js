// The standard streams opened again by name, as shell scripts (`echo x > /dev/stderr`), loggers
// and tools given a path for their output do.
"use strict";
const fs = require("fs");
fs.writeFileSync("/dev/stdout", "to /dev/stdout\n");
fs.writeFileSync("/dev/stderr", "to /dev/stderr\n");
fs.appendFileSync("/proc/self/fd/1", "to /proc/self/fd/1\n");
console.log("stdin:", fs.readFileSync("/dev/stdin", "utf8").split("\n"));
