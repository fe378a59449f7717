'use strict';
// Shared pieces of the adapter's tests: real pthost processes (PTHOST_EXE), real servers on
// 127.0.0.1 with ports from binding 0, and waits for conditions with a deadline.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const dgram = require('node:dgram');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');

const PTHOST_EXE = process.env.PTHOST_EXE;
assert.ok(PTHOST_EXE && fs.existsSync(PTHOST_EXE), 'PTHOST_EXE must name the published pthost executable');

/** Polls `condition` every 20 ms until it is truthy; fails after `ms` naming `what`. */
async function waitFor(condition, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await condition();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** True when the process is gone (no /proc entry, or a zombie nobody reaped yet). */
function pidGone(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `pthost-node-${prefix}-`));
}

function listening(server, ...args) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(...args, () => resolve(server.address()));
  });
}

/** An HTTP server on 127.0.0.1:0 that answers every request with `body`. */
async function webServer(body) {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-length': body.length });
    res.end(body);
  });
  const a = await listening(server, 0, '127.0.0.1');
  return { server, port: a.port };
}

/** A TCP echo server on 127.0.0.1:0. */
async function echoServer() {
  const sockets = new Set();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    s.pipe(s);
  });
  const a = await listening(server, 0, '127.0.0.1');
  return { server, port: a.port, close: () => { for (const s of sockets) s.destroy(); server.close(); } };
}

/** A UDP echo socket on 127.0.0.1:0. */
async function udpEchoServer() {
  const socket = dgram.createSocket('udp4');
  socket.on('message', (msg, rinfo) => socket.send(msg, rinfo.port, rinfo.address));
  await new Promise((resolve) => socket.bind(0, '127.0.0.1', resolve));
  return { port: socket.address().port, close: () => socket.close() };
}

/** A TURN socket of `client`'s first connector, closed (with client and proxy) after the test. */
function turnSocket(t, client, proxy, echo, options) {
  const socket = client[0].createUDPSocket(options);
  t.after(async () => {
    await new Promise((resolve) => socket.close(resolve));
    await closeAll(client, proxy);
    echo.close();
  });
  const errors = [];
  socket.on('error', (err) => errors.push(err));
  return { socket, errors };
}

function sha256(buf) {
  return crypto.createHash('sha256').update(buf).digest('hex');
}

/** GET / through `createConnection`; resolves with { status, sha256, length }. */
function fetchThrough(createConnection, port) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', createConnection }, (res) => {
      const h = crypto.createHash('sha256');
      let length = 0;
      res.on('data', (d) => { h.update(d); length += d.length; });
      res.on('end', () => resolve({ status: res.statusCode, sha256: h.digest('hex'), length }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));
}

function closeAll(...closables) {
  return Promise.all(closables.map((c) => new Promise((resolve) => c.close(() => resolve()))));
}

/** Reads stdout lines of a child until `match` (a RegExp) matches; resolves with the match. */
function waitForLine(child, match, ms, what) {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    const onData = (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const m = match.exec(line);
        if (m) {
          clearTimeout(timer);
          child.stdout.off('data', onData);
          resolve(m);
          return;
        }
      }
    };
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', onData);
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`${what}: process exited with ${code}`)); });
  });
}

/** `pthost relay zephyr --listen 127.0.0.1:0` (spec/zephyr.md §5); resolves { child, address }. */
async function zephyrRelay() {
  const child = spawn(PTHOST_EXE, ['relay', 'zephyr', '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stderr.resume();
  const m = await waitForLine(child, /^LISTEN zephyr (\S+)$/, 20000, 'the zephyr relay\'s LISTEN line');
  const close = () => new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) { resolve(); return; }
    child.once('exit', resolve);
    child.kill('SIGTERM');
  });
  return { child, address: m[1], close };
}

module.exports = {
  PTHOST_EXE, waitFor, pidGone, tempDir, listening, webServer, echoServer, udpEchoServer, turnSocket, sha256, fetchThrough, once, closeAll, waitForLine, zephyrRelay,
};
