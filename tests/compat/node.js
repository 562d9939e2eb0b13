// What ordinary Node code does with processes, threads, files, loopback sockets, name lookups,
// timers, stdin and terminals, printed as lines that must read the same outside (as an
// unprivileged user) and inside a sandbox (tests/compat/main.rs compares them). Nothing printed
// depends on who or where runs it: no pids, ports, paths or times.
'use strict';
const assert = require('assert');
const childProcess = require('child_process');
const dns = require('dns');
const fs = require('fs');
const net = require('net');
const path = require('path');
const tty = require('tty');
const { Worker } = require('worker_threads');

const lines = [];
const say = (...words) => lines.push(words.join(' '));

function childProcesses() {
  say('execFileSync', childProcess.execFileSync('/bin/echo', ['hi']).toString().trim());
  const failed = childProcess.spawnSync('/bin/sh', ['-c', 'echo err >&2; exit 3']);
  say('spawnSync', failed.status, failed.stderr.toString().trim());
  say('missing program', childProcess.spawnSync('/nonexistent/program').error.code);
  return new Promise((resolve) => {
    const child = childProcess.spawn(process.execPath, ['-e', 'process.stdin.pipe(process.stdout)']);
    let echoed = '';
    child.stdout.on('data', (chunk) => { echoed += chunk; });
    child.on('close', (code) => { say('spawn pipe', code, echoed); resolve(); });
    child.stdin.end('through a child');
  });
}

function workerThreads() {
  return new Promise((resolve) => {
    const worker = new Worker(
      "const { parentPort } = require('worker_threads'); parentPort.on('message', (n) => parentPort.postMessage(n * 2));",
      { eval: true });
    worker.once('message', (doubled) => {
      say('worker', doubled);
      worker.terminate().then(() => resolve());
    });
    worker.postMessage(21);
  });
}

async function files() {
  const dir = fs.mkdtempSync(path.join(require('os').tmpdir(), 'bkg-compat-'));
  const file = path.join(dir, 'a.txt');
  fs.writeFileSync(file, 'one\n');
  fs.appendFileSync(file, 'two\n');
  fs.renameSync(file, path.join(dir, 'b.txt'));
  fs.symlinkSync('b.txt', path.join(dir, 'link'));
  fs.chmodSync(path.join(dir, 'b.txt'), 0o640);
  const stat = fs.statSync(path.join(dir, 'link'));
  say('fs', fs.readdirSync(dir).sort().join(','), stat.size, (stat.mode & 0o777).toString(8));
  say('fs read through link', JSON.stringify(await fs.promises.readFile(path.join(dir, 'link'), 'utf8')));
  const watcher = fs.watch(dir);
  const changed = new Promise((resolve) => watcher.once('change', (kind, name) => resolve(`${kind} ${name}`)));
  fs.writeFileSync(path.join(dir, 'c.txt'), 'x');
  say('fs.watch', await changed);
  watcher.close();
  try { fs.readFileSync('/etc/shadow-does-not-exist'); } catch (error) { say('fs missing', error.code); }
  fs.rmSync(dir, { recursive: true });
  say('fs removed', fs.existsSync(dir));
}

function loopback() {
  return new Promise((resolve) => {
    const server = net.createServer((socket) => socket.pipe(socket));
    server.listen(0, '127.0.0.1', () => {
      const client = net.connect(server.address().port, '127.0.0.1', () => client.end('ping'));
      let answer = '';
      client.on('data', (chunk) => { answer += chunk; });
      client.on('close', () => {
        say('net loopback', answer);
        const refused = net.connect(1, '127.0.0.1');
        refused.on('error', (error) => { say('net refused', error.code); server.close(resolve); });
      });
    });
  });
}

async function names() {
  const local = await dns.promises.lookup('localhost', { family: 4 });
  say('dns localhost', local.address);
  // Only names /etc/hosts answers: outside, anything else would ask a real DNS server.
  const numeric = await dns.promises.lookup('::1');
  say('dns numeric', numeric.address, numeric.family);
  const service = await dns.promises.lookupService('127.0.0.1', 80);
  say('dns service', service.service);
}

function timers() {
  return new Promise((resolve) => {
    const order = [];
    setTimeout(() => order.push('timeout'), 0);
    setImmediate(() => order.push('immediate'));
    process.nextTick(() => order.push('tick'));
    Promise.resolve().then(() => order.push('microtask'));
    let ticks = 0;
    const interval = setInterval(() => {
      ticks += 1;
      if (ticks === 3) {
        clearInterval(interval);
        say('timers', order.slice(0, 2).join(','), order.slice(2).sort().join(','), 'interval', ticks);
        resolve();
      }
    }, 5);
  });
}

function stdin() {
  return new Promise((resolve) => {
    let data = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk) => { data += chunk; });
    process.stdin.on('end', () => { say('stdin', JSON.stringify(data)); resolve(); });
  });
}

function terminals() {
  say('isatty', [0, 1, 2].map((fd) => tty.isatty(fd)).join(','),
    'stdout.isTTY', Boolean(process.stdout.isTTY), 'stdin.isTTY', Boolean(process.stdin.isTTY));
}

(async () => {
  await childProcesses();
  await workerThreads();
  await files();
  await loopback();
  await names();
  await timers();
  await stdin();
  terminals();
  assert.ok(lines.length >= 15);
  console.log('BKG-COMPAT ' + JSON.stringify(lines));
})();
