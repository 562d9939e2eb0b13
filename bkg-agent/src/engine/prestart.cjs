// The loader of a prestarted Node (engine/prestart.rs): preloaded through NODE_OPTIONS when a
// pool sandbox is prepared, it waits for its run's order, then lets Node's own main-module start
// run the script: the placeholder main path resolves, once, to the script. Why it is built the
// way it is: docs/testing.md, "The zygote". A Worker of the script preloads it too, and it does
// nothing there.
'use strict';
if (require('worker_threads').isMainThread) {
  const fs = require('fs');
  const path = require('path');
  const Module = require('module');
  delete require.cache[__filename];

  // The run's stdout and stderr are pipes to the agent. Node makes process.stdout on its first
  // use, loading net and the streams for it: about 2 ms of the run's own time, unless loaded
  // here. Only process.moduleLoadList tells (docs/security.md, "prestarted interpreter").
  require('net');
  // V8 compiles a function at its first call: a run's first console.log compiled the console's
  // formatting and the streams' write path. Calling them here, on a console of its own that
  // writes nowhere, leaves them compiled (0.5 ms less of a `hello.js`, docs/testing.md) and
  // changes nothing the script can see: the global console, process.stdout and process.stderr
  // are not made, no descriptor is opened. Without colours, as with them the console loads the
  // module that reads process.stderr (made then, with its descriptor made non-blocking; the
  // conformance suite's descriptor list caught it). The stream's own ticks (after its writes,
  // its close) stay queued and run before the script's first: they touch nothing but this
  // stream.
  {
    const { Writable } = require('stream');
    const nowhere = new Writable({ write(chunk, encoding, done) { done(); } });
    const quiet = new console.Console({ stdout: nowhere, stderr: nowhere, colorMode: false });
    for (let round = 0; round < 2; round++) {
      quiet.log('%s %d', 'text', 1, 'text', 2.5, { key: ['list', 1, null] }, [undefined, true], 10n);
      quiet.error(new Map([[1, { nested: [1] }]]), new Set(['a']), () => 0);
    }
    nowhere.destroy();
  }

  fs.writeSync(READY_FD, '1');
  fs.closeSync(READY_FD);
  const chunks = [];
  const buffer = Buffer.alloc(65536);
  for (let read; (read = fs.readSync(ORDER_FD, buffer, 0, buffer.length, null)) > 0; ) {
    chunks.push(Buffer.from(buffer.subarray(0, read)));
  }
  fs.closeSync(ORDER_FD);
  // Every field ends with a NUL: "1" when stderr is to be stdout's pipe, the working directory,
  // the count of arguments, the arguments (the interpreter's path first), then the environment
  // as KEY=VALUE.
  const fields = Buffer.concat(chunks).toString('utf8').split('\0').slice(0, -1);
  if (fields[0] === '1') {
    // Node has no dup2: descriptor 2 is closed and stdout's pipe opened again, by name, in its
    // place, the lowest free descriptor (a pipe opens by name for its owner, the code:
    // engine/sandbox.rs, `code_pipe`). process.stderr, not made yet, is made on it.
    fs.closeSync(2);
    if (fs.openSync('/proc/self/fd/1', fs.constants.O_WRONLY) !== 2) {
      fs.writeSync(1, 'bkg: the interpreter started ahead could not give stderr to stdout\n');
      process.reallyExit(125);
    }
  }
  const count = Number(fields[2]);
  const argv = fields.slice(3, 3 + count);
  process.chdir(fields[1]);
  for (const key of Object.keys(process.env)) {
    delete process.env[key];
  }
  for (const item of fields.slice(3 + count)) {
    const equals = item.indexOf('=');
    process.env[item.slice(0, equals)] = item.slice(equals + 1);
  }
  const script = path.resolve(argv[1]);
  process.argv.splice(1, process.argv.length - 1, script, ...argv.slice(2));

  const placeholder = PLACEHOLDER;
  const findPath = Module._findPath;
  const resolveFilename = Module._resolveFilename;
  // Node resolves its main module through these two (lib/internal/modules/run_main.js): each
  // answers for the placeholder once with the script, then is itself again, before the script
  // runs, so no frame of this file is ever below the script's.
  Module._findPath = function (request, paths, isMain) {
    if (isMain && request === placeholder) {
      Module._findPath = findPath;
      return findPath.call(this, script, paths, isMain);
    }
    return findPath.apply(this, arguments);
  };
  Module._resolveFilename = function (request, parent, isMain, options) {
    if (isMain && request === placeholder) {
      Module._resolveFilename = resolveFilename;
      return resolveFilename.call(this, script, parent, isMain, options);
    }
    return resolveFilename.apply(this, arguments);
  };
}
