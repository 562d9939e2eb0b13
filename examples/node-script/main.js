// Counts the words of text.txt (beside this script) and prints the most frequent ones; the full
// table goes to /workspace/counts.json, the sandbox's writable folder.
'use strict';

const fs = require('fs');
const path = require('path');

function count(text) {
  const counts = new Map();
  for (const word of text.toLowerCase().match(/[a-z']+/g) || []) {
    counts.set(word, (counts.get(word) || 0) + 1);
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
}

function main(argv) {
  const topAt = argv.indexOf('--top');
  const top = topAt >= 0 ? Number(argv[topAt + 1]) : 5;
  const text = fs.readFileSync(path.join(__dirname, 'text.txt'), 'utf8');
  const counts = count(text);
  for (const [word, n] of counts.slice(0, top)) {
    console.log(`${String(n).padStart(3)} ${word}`);
  }
  const out = path.join(process.env.RESULTS_DIR || '/workspace', 'counts.json');
  fs.writeFileSync(out, JSON.stringify(Object.fromEntries(counts), null, 2) + '\n');
  console.log(`${counts.length} distinct words, table saved to ${out}`);
}

main(process.argv.slice(2));
