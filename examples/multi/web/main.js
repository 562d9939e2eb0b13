// Renders data/orders.csv (mounted at /workspace/data) as an HTML table in /workspace.
'use strict';

const fs = require('fs');
const path = require('path');

const workspace = process.env.RESULTS_DIR || '/workspace';
const data = process.env.DATA_DIR || path.join(workspace, 'data');

const [header, ...rows] = fs
  .readFileSync(path.join(data, 'orders.csv'), 'utf8')
  .trim()
  .split('\n')
  .map((line) => line.split(','));
const cells = (row, tag) => row.map((cell) => `<${tag}>${cell}</${tag}>`).join('');
const html = [
  '<table>',
  `<tr>${cells(header, 'th')}</tr>`,
  ...rows.map((row) => `<tr>${cells(row, 'td')}</tr>`),
  '</table>',
].join('\n');
const out = path.join(workspace, 'orders.html');
fs.writeFileSync(out, html + '\n');
console.log(`${rows.length} orders rendered to ${out}`);
