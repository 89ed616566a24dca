// Validates the AsyncAPI document with the AsyncAPI initiative's parser (spec schema, the
// Spectral rule set it ships, and every $ref resolved, including the JSON Schema files under
// schemas/mqtt/). Usage: node .ci/asyncapi/validate.mjs schemas/asyncapi.yaml
// Exits 1 on any error-severity diagnostic, and on warnings too: the document is generated,
// so a warning is a generator bug to fix, not noise to live with.
import { resolve } from 'node:path';
import { Parser, fromFile } from '@asyncapi/parser';

const path = process.argv[2] && resolve(process.argv[2]);
if (!path) {
  console.error('usage: node validate.mjs <asyncapi.yaml>');
  process.exit(2);
}
const severities = ['error', 'warning', 'info', 'hint'];
const parser = new Parser();
// parse = validate + resolve + build the model; `document` is undefined when it failed.
const { document, diagnostics } = await fromFile(parser, path).parse();
let failed = 0;
for (const d of diagnostics) {
  const severity = severities[d.severity] ?? String(d.severity);
  console.log(`${path}: ${severity} ${d.code}: ${d.message} at /${d.path.join('/')}`);
  if (d.severity <= 1) failed += 1;
}
if (!document || failed > 0) {
  console.log(`${path}: INVALID (${failed} error(s) or warning(s))`);
  process.exit(1);
}
const channels = document.channels().length;
const operations = document.operations().length;
const messages = document.components().messages().length;
console.log(
  `${path}: valid AsyncAPI ${document.version()} (${channels} channels, ${operations} operations, ${messages} messages)`,
);
