'use strict';
// The Node adapter benchmark's application side (Scenarios/NodeAdapterScenario.cs). Usage:
//   node adapter-bench.js ADAPTER_DIR MODE JSON
// MODE stream-raw:     { socksPort, sinkPort, bytes } — a hand-written SOCKS5 client (method 00)
//                      on net.connect, then the stream: the same chain without the adapter.
// MODE stream-adapter: { serverPort, sinkPort, bytes, pthost } — createConnector (its own pthost
//                      client to the harness's server) and createConnection, then the stream.
// MODE startup:        { serverPort, sinkPort, runs, pthost } — pthost's own start (spawn →
//                      CMETHODS DONE → SOCKS5 success reply, by hand) and the adapter's
//                      (createConnector → first 'connect'), alternating, one unmeasured pair first.
// Each prints one JSON line on stdout. The stream: 1 MiB writes with backpressure, end(), and the
// time from the first write to the 'end' the sink's close sends back. Both stream modes first
// send 256 MiB on a connection of their own, so that the pthost client is equally warm.

const net = require('node:net');
const { spawn } = require('node:child_process');
const { performance } = require('node:perf_hooks');

const [adapterDir, mode, json] = process.argv.slice(2);
const p = JSON.parse(json);
const pthost = require(adapterDir);
const CHUNK = Buffer.alloc(1 << 20, 0x61);
const WARM_UP = 256 << 20;

function stream(socket, bytes) {
  return new Promise((resolve, reject) => {
    let sent = 0;
    const t0 = performance.now();
    socket.on('error', reject);
    socket.on('end', () => resolve(performance.now() - t0));
    socket.resume();
    const pump = () => {
      while (sent < bytes) {
        sent += CHUNK.length;
        if (!socket.write(CHUNK)) {
          socket.once('drain', pump);
          return;
        }
      }
      socket.end();
    };
    pump();
  });
}

function rawSocks(port, destPort) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    s.once('error', reject);
    s.once('connect', () => s.write(Buffer.from([0x05, 0x01, 0x00])));
    const onData = (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length === 2) {
        if (buf[1] !== 0x00) reject(new Error(`method ${buf[1]}`));
        s.write(Buffer.from([0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1, destPort >> 8, destPort & 0xff]));
      } else if (buf.length >= 12) {
        s.off('data', onData);
        s.pause();
        if (buf[3] !== 0x00) reject(new Error(`reply ${buf[3]}`));
        else resolve(s);
      }
    };
    s.on('data', onData);
  });
}

function clientConfig() {
  return { transports: ['plain'], options: { plain: { serverAddress: `127.0.0.1:${p.serverPort}` } }, turn: false };
}

function connected(socket) {
  return new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
}

/** pthost alone: spawn it as the adapter would, read stdout to CMETHODS DONE, SOCKS5 by hand. */
function ownStart() {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const cfg = { ...clientConfig(), role: 'client', 'exit-on-stdin-close': true, state: p.state };
    delete cfg.turn;
    const child = spawn(p.pthost, [JSON.stringify(cfg)], { stdio: ['pipe', 'pipe', 'ignore'] });
    let out = '';
    child.on('error', reject);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', function onData(d) {
      out += d;
      if (!out.includes('CMETHODS DONE\n')) return;
      child.stdout.off('data', onData);
      const done = performance.now();
      const socksPort = Number(/^CMETHOD plain socks5 127\.0\.0\.1:(\d+)$/m.exec(out)[1]);
      rawSocks(socksPort, p.sinkPort).then((s) => {
        const now = performance.now();
        s.destroy();
        child.on('close', () => resolve({ ms: now - t0, afterDone: now - done }));
        child.stdin.end();
      }, reject);
    });
  });
}

async function adapterStart() {
  const t0 = performance.now();
  const conns = pthost.createConnector(clientConfig(), null, null, { executable: p.pthost });
  let done = 0;
  conns.process.once('ready', () => { done = performance.now(); });
  const s = conns[0].createConnection({}, { host: '127.0.0.1', port: p.sinkPort });
  await connected(s);
  const now = performance.now();
  s.destroy();
  await new Promise((r) => conns.close(r));
  return { ms: now - t0, afterDone: now - done };
}

async function main() {
  if (mode === 'stream-raw') {
    await stream(await rawSocks(p.socksPort, p.sinkPort), WARM_UP);
    const ms = await stream(await rawSocks(p.socksPort, p.sinkPort), p.bytes);
    return { gbps: (p.bytes * 8) / (ms / 1000) / 1e9, ms };
  }
  if (mode === 'stream-adapter') {
    const conns = pthost.createConnector(clientConfig(), null, null, { executable: p.pthost });
    const open = async () => {
      const s = conns[0].createConnection({}, { host: '127.0.0.1', port: p.sinkPort });
      await connected(s);
      return s;
    };
    await stream(await open(), WARM_UP);
    const ms = await stream(await open(), p.bytes);
    await new Promise((r) => conns.close(r));
    return { gbps: (p.bytes * 8) / (ms / 1000) / 1e9, ms };
  }
  if (mode === 'startup') {
    const own = [];
    const adapter = [];
    for (let i = 0; i <= p.runs; i++) {
      const first = i % 2 === 0 ? ownStart : adapterStart;
      const second = first === ownStart ? adapterStart : ownStart;
      const a = await first();
      const b = await second();
      if (i === 0) continue;
      (first === ownStart ? own : adapter).push(a);
      (second === ownStart ? own : adapter).push(b);
    }
    return { own, adapter };
  }
  throw new Error(`unknown mode ${mode}`);
}

main().then((r) => { process.stdout.write(`${JSON.stringify(r)}\n`); }, (e) => { process.stderr.write(`${e.stack}\n`); process.exit(1); });
