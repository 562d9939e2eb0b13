// A Worker of the script: in a prestarted Node it preloads the loader again, as NODE_OPTIONS'
// `--require` holds for every thread, and must find it there and doing nothing.
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');
if (isMainThread) {
  // A script that clears its temporary directory (of what bkg could have put there: nothing
  // else is touched, as this also runs bare on the host) leaves its Workers their loader.
  const fs = require('fs');
  const os = require('os');
  const path = require('path');
  for (const name of fs.readdirSync(os.tmpdir()).filter((name) => name.startsWith('.bkg'))) {
    try {
      fs.unlinkSync(path.join(os.tmpdir(), name));
    } catch {}
  }
  const worker = new Worker(__filename, { workerData: 21 });
  worker.on('message', (answer) => console.log('the worker said', answer));
  worker.on('error', (error) => {
    console.log('the worker failed:', error.message);
    process.exitCode = 1;
  });
  worker.on('exit', (code) => console.log('the worker exited with', code));
} else {
  parentPort.postMessage(workerData * 2);
}
