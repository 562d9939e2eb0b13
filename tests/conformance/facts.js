// What a Node program can learn about how it was started (tests/conformance/main.rs compares it
// across bare, cold and warm runs after replacing the script's own directory with <dir>).
"use strict";
const fs = require("fs");
const path = require("path");

const here = __dirname;
function portable(value) {
  if (typeof value === "string") return value.split(here).join("<dir>");
  if (Array.isArray(value)) return value.map(portable);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, portable(item)]));
  }
  return value;
}

const stdin = fs.readFileSync(0, "utf8");
// Scheduling policy (stat field 41) and CPUs, per thread: all alike bare and cold; a warm run's
// interpreter had its threads before it took the run's.
function scheduling(thread) {
  const stat = fs.readFileSync(`/proc/self/task/${thread}/stat`, "utf8");
  const status = fs.readFileSync(`/proc/self/task/${thread}/status`, "utf8");
  return `${stat.slice(stat.lastIndexOf(")") + 2).split(" ")[38]} ${status.match(/Cpus_allowed_list:\s*(\S+)/)[1]}`;
}
const facts = {
  argv: process.argv,
  execArgv: process.execArgv,
  execPath: process.execPath,
  mainIsModule: require.main === module,
  filename: __filename,
  dirname: __dirname,
  paths: module.paths,
  moduleId: module.id,
  cwd: process.cwd(),
  env: Object.fromEntries(Object.entries(process.env).sort()),
  stdin,
  isTTY: [process.stdin.isTTY, process.stdout.isTTY, process.stderr.isTTY],
  umask: process.umask(),
  loadedBuiltins: require("module").builtinModules.length,
  requireCacheKeys: Object.keys(require.cache),
  globals: Object.getOwnPropertyNames(globalThis).sort(),
  threadsScheduledAlike: new Set(fs.readdirSync("/proc/self/task").map(scheduling)).size === 1,
  openFds: fs.readdirSync("/proc/self/fd").map(Number).sort((a, b) => a - b),
  listeners: ["SIGINT", "SIGTERM", "SIGUSR2", "exit", "uncaughtException"].map((name) => process.listenerCount(name)),
  versions: process.versions.node,
  release: process.release.name,
};
console.log(JSON.stringify(portable(facts)));
process.on("exit", (code) => console.log("exit handler with", code));
// A signal listener does not keep the event loop alive; this interval does, until it arrives.
const waiting = setInterval(() => {}, 1000);
process.on("SIGUSR2", () => {
  console.log("SIGUSR2 handled");
  process.exitCode = Number(process.argv[2] || 0);
  clearInterval(waiting);
});
process.kill(process.pid, "SIGUSR2");
