// A Worker of the script: in a prestarted Node it preloads the loader again, as NODE_OPTIONS'
// `--require` holds for every thread, and must find it there and doing nothing.
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');
if (isMainThread) {
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
