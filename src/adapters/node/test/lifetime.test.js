'use strict';
// No pthost is left running after any way an application ends: close(), process exit, an
// uncaught exception, SIGTERM and SIGKILL (pthost's stdin closes; it runs with
// exit-on-stdin-close). Each case waits until both pthost pids are gone from /proc.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const h = require('./helpers');

const APP = path.join(__dirname, 'fixtures', 'app.js');

async function runApp(how, setsid) {
  const child = spawn(process.execPath, [APP, how, setsid ? 'setsid' : ''], { stdio: ['ignore', 'pipe', 'pipe'], cwd: path.join(__dirname, '..') });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const m = await h.waitForLine(child, /^(\{.*\})$/, 30000, `the ${how} application's pids`).catch((e) => {
    throw new Error(`${e.message}; stderr: ${stderr}`);
  });
  return { child, pids: JSON.parse(m[1]), exited, stderr: () => stderr };
}

async function assertNoPthostLeft(pids, how) {
  await h.waitFor(() => h.pidGone(pids.client) && h.pidGone(pids.server), 20000, `both pthost processes to end after ${how}`);
}

test('close(): both pthost children end and the application exits by itself', { timeout: 60000 }, async () => {
  const app = await runApp('close');
  assert.deepEqual(await app.exited, { code: 0, signal: null }, app.stderr());
  await assertNoPthostLeft(app.pids, 'close()');
});

test('process.exit() without close(): the children end', { timeout: 60000 }, async () => {
  const app = await runApp('exit');
  assert.deepEqual(await app.exited, { code: 0, signal: null });
  await assertNoPthostLeft(app.pids, 'process.exit()');
});

test('an uncaught exception: the children end', { timeout: 60000 }, async () => {
  const app = await runApp('throw');
  const { code } = await app.exited;
  assert.equal(code, 1);
  await assertNoPthostLeft(app.pids, 'an uncaught exception');
});

for (const signal of ['SIGTERM', 'SIGKILL']) {
  test(`the application killed with ${signal}: the children end`, { timeout: 60000 }, async () => {
    const app = await runApp('wait');
    assert.ok(!h.pidGone(app.pids.client) && !h.pidGone(app.pids.server), 'pthost runs while the application does');
    process.kill(app.pids.app, signal);
    assert.equal((await app.exited).signal, signal);
    await assertNoPthostLeft(app.pids, signal);
  });
}

function sessionOf(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]);
}

test('pthost shares the application\'s session, or has its own with setsid: true; SIGKILL ends it either way', { timeout: 60000 }, async () => {
  for (const setsid of [false, true]) {
    const app = await runApp('wait', setsid);
    const same = sessionOf(app.pids.client) === sessionOf(app.pids.app);
    assert.equal(same, !setsid, `setsid: ${setsid}`);
    assert.equal(sessionOf(app.pids.client), setsid ? app.pids.client : sessionOf(app.pids.app));
    process.kill(app.pids.app, 'SIGKILL');
    await app.exited;
    await assertNoPthostLeft(app.pids, `SIGKILL (setsid: ${setsid})`);
  }
});
