// The page loads the browser builds of its two libraries from vendor/ (the page has no build
// step and needs no network). This checks that every vendored file is byte-for-byte the one
// in the pinned npm package (package-lock.json, installed by `npm ci`), so a vendored file can
// neither drift from its version nor be edited by hand. Run by .ci/run after `npm ci`.
//
// To update a library: bump it in package.json, `npm install`, copy the files below from
// node_modules/ into vendor/, and run this.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = join(dirname(fileURLToPath(import.meta.url)), '..');
const VENDORED = [
  ['vendor/mqtt.min.js', 'node_modules/mqtt/dist/mqtt.min.js'],
  ['vendor/LICENSE-mqtt.md', 'node_modules/mqtt/LICENSE.md'],
  ['vendor/uPlot.iife.min.js', 'node_modules/uplot/dist/uPlot.iife.min.js'],
  ['vendor/uPlot.min.css', 'node_modules/uplot/dist/uPlot.min.css'],
  ['vendor/LICENSE-uplot', 'node_modules/uplot/LICENSE'],
];

let bad = 0;
for (const [vendored, upstream] of VENDORED) {
  let a, b;
  try {
    a = readFileSync(join(here, vendored));
    b = readFileSync(join(here, upstream));
  } catch (e) {
    console.error(`${vendored}: cannot compare with ${upstream}: ${e.message} (run npm ci in examples/dashboard)`);
    bad++;
    continue;
  }
  if (Buffer.compare(a, b) !== 0) {
    console.error(`${vendored} differs from ${upstream} (${a.length} vs ${b.length} bytes): copy it again from node_modules`);
    bad++;
  } else {
    console.log(`${vendored}: same as ${upstream}`);
  }
}
const lock = JSON.parse(readFileSync(join(here, 'package-lock.json'), 'utf8'));
for (const name of ['mqtt', 'uplot']) {
  const v = lock.packages[`node_modules/${name}`]?.version;
  console.log(`${name} ${v ?? '(not in package-lock.json)'}`);
  if (!v) bad++;
}
process.exit(bad ? 1 : 0);
