'use strict';
// The README's example, copied verbatim into a file and run against the real pthost.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const h = require('./helpers');

test('the README example works when copied verbatim', { timeout: 60000 }, async () => {
  const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
  const m = /## Example\n[\s\S]*?```js\n([\s\S]*?)```/.exec(readme);
  assert.ok(m, 'the README has a js block under "## Example"');
  const code = m[1];
  assert.ok(code.split('\n').filter((l) => l.trim() !== '').length <= 10, 'the example has at most 10 lines');
  const dir = path.join(__dirname, '..');
  const file = path.join(dir, 'readme-example.js');
  fs.writeFileSync(file, code);
  const child = spawn(process.execPath, [file], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  const [code_, signal] = await h.once(child, 'exit');
  assert.equal(signal, null);
  assert.equal(code_, 0, err);
  assert.equal(out, 'hello through pthost\n');
});
