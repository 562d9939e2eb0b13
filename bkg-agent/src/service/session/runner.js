// The interpreter of a bkg session (bkg-agent/src/service/sessions.rs): reads one JSON request a
// line on stdin ({"code", "execution"}), runs it in one context kept between executions, and
// answers with events, one JSON object a line after \x1e, on its stdout.
const vm = require("vm");
const util = require("util");
const readline = require("readline");

const send = (event) => process.stdout.write("\x1e" + JSON.stringify(event) + "\n");
// A long output goes as several events of this many UTF-16 units at most (the agent holds an
// event's line whole until it ends), never splitting a surrogate pair.
const STREAM_CHUNK = 65536;
const stream = (name) => (...args) => {
  const text = util.format(...args) + "\n";
  for (let at = 0; at < text.length;) {
    let end = Math.min(at + STREAM_CHUNK, text.length);
    const last = text.charCodeAt(end - 1);
    if (end < text.length && last >= 0xd800 && last <= 0xdbff) end -= 1;
    send({ type: "stream", name, text: text.slice(at, end) });
    at = end;
  }
};
const userConsole = {
  log: stream("stdout"), info: stream("stdout"), debug: stream("stdout"),
  error: stream("stderr"), warn: stream("stderr"), trace: stream("stderr"),
  dir: (value) => stream("stdout")(util.inspect(value)), table: stream("stdout"),
};
const bundle = (value) => {
  const data = { "text/plain": util.inspect(value) };
  if (value !== null && typeof value === "object" && !Array.isArray(value) && value.constructor === Object) {
    data["application/json"] = value;
  }
  return data;
};
// Shows a value, or `data`: {MIME type: content}, e.g. display(null, {"text/html": "<b>hi</b>"}).
const display = (value, data) => send({ type: "display", data: data === undefined ? bundle(value) : data });

const context = vm.createContext({
  console: userConsole, display, require, process, Buffer, URL, TextEncoder, TextDecoder,
  setTimeout, setInterval, clearTimeout, clearInterval, setImmediate, queueMicrotask,
  module: { exports: {} },
});
// Ctrl-C between executions must not end the session; during one, breakOnSigint throws in it.
process.on("SIGINT", () => {});
// The agent's end of stdout gone: the session is over (its errors must not loop through the
// handlers below).
process.stdout.on("error", () => process.exit(1));

const userTrace = (error) => {
  const stack = String((error && error.stack) || error);
  return stack.split("\n").filter((line) => !/\[eval\]|\(node:|at Script\.runInContext|at runInContext/.test(line))
    .map((line) => line + "\n");
};

// An error no cell's run catches (a promise rejected with no handler, a timer that throws) is
// reported as Node's REPL reports it, and the session goes on: Node would end the process, and
// every variable with it. It reaches the execution going on, else the next one.
const uncaught = (error) => send({ type: "stream", name: "stderr", text: "Uncaught " + userTrace(error).join("") });
process.on("uncaughtException", uncaught);
process.on("unhandledRejection", uncaught);

const run = async ({ code, execution }) => {
  let status = "ok";
  try {
    const script = new vm.Script(code, { filename: `<cell ${execution}>` });
    let value = script.runInContext(context, { breakOnSigint: true });
    if (value && typeof value.then === "function") value = await value;
    if (value !== undefined) send({ type: "result", data: bundle(value) });
  } catch (error) {
    const interrupted = error && error.code === "ERR_SCRIPT_EXECUTION_INTERRUPTED";
    status = interrupted ? "interrupted" : "error";
    const name = (error && error.name) || "Error";
    const message = error && error.message !== undefined ? String(error.message) : String(error);
    send({ type: "error", name, message, traceback: userTrace(error) });
  }
  send({ type: "end", status, execution });
};

let queue = Promise.resolve();
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  let request;
  try { request = JSON.parse(line); } catch { return; }
  queue = queue.then(() => run(request));
});
