'use strict';
// 1 MiB over HTTP with its SHA-256 checked: through plain (a free server with allow) and through
// zephyr (a bound server from createServer, a real `pthost relay zephyr`), the signals carried by
// the test between the client and the server adapter.

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const http = require('node:http');
const pthost = require('pthost');
const h = require('./helpers');

const BODY = crypto.randomBytes(1 << 20);
const BODY_SHA = h.sha256(BODY);

test('1 MiB HTTP fetch through plain: free server with allow, client with discover', { timeout: 60000 }, async (t) => {
  const web = await h.webServer(BODY);
  const proxy = pthost.createProxy({ transports: ['plain'], allow: ['127.0.0.1'] }, h.tempDir('plain-server'));
  const client = pthost.createConnector({ transports: ['plain'], options: { plain: { discover: true } } }, h.tempDir('plain-client'));
  t.after(async () => { await h.closeAll(client, proxy); web.server.close(); });
  client.signals.pipe(proxy.signals);
  proxy.signals.pipe(client.signals);
  const [connector] = client;
  assert.equal(connector.name, 'plain');
  assert.equal(connector.isBound(), false, 'plain with discover finds its server: the address is the final destination');

  const got = await h.fetchThrough((opts) => connector.createConnection({}, opts), web.port);
  assert.deepEqual(got, { status: 200, sha256: BODY_SHA, length: BODY.length });

  // Statistics asked for now (STATUS on stdin) carry the whole body; the periodic snapshot follows.
  const asked = await new Promise((resolve, reject) => connector.getStats((err, s) => (err ? reject(err) : resolve(s))));
  assert.equal(asked.opened, 1);
  assert.ok(asked.bytesOut >= BODY.length, `client BYTES-OUT ${asked.bytesOut} covers the body`);
  const served = await new Promise((resolve, reject) => proxy.getStats((err, s) => (err ? reject(err) : resolve(s))));
  assert.equal(served.opened, 1);
  assert.ok(served.bytesOut >= BODY.length);
  await h.waitFor(() => proxy.getStats().bytesOut >= BODY.length, 5000, 'the 1-second STATUS snapshot');
});

test('1 MiB HTTP fetch through zephyr: pthost relay zephyr, bound server from createServer', { timeout: 90000 }, async (t) => {
  const relay = await h.zephyrRelay();
  const { client: clientCfg, server: serverCfg } = pthost.generateConfiguration('zephyr');
  clientCfg.options.zephyr.relay = relay.address;
  serverCfg.options.zephyr.relay = relay.address;

  // The application's own HTTP server takes the connections createServer hands it.
  const app = http.createServer((req, res) => {
    res.writeHead(200, { 'content-length': BODY.length });
    res.end(BODY);
  });
  const server = pthost.createServer(serverCfg, h.tempDir('zephyr-server'), null, {}, (socket) => app.emit('connection', socket));
  const client = pthost.createConnector(clientCfg, h.tempDir('zephyr-client'));
  t.after(async () => { await h.closeAll(client, server); await relay.close(); });

  // Carried by the test, line by line, as an application would carry them.
  const carried = { offers: 0, answers: 0 };
  client.signals.on('data', (line) => { carried.offers++; server.signals.write(line); });
  server.signals.on('data', (line) => { carried.answers++; client.signals.write(line); });

  const method = await server.ready();
  assert.equal(method.name, 'zephyr');
  assert.match(method.args.pin, /^[0-9a-f]{64}$/, 'SMETHOD ARGS carry the server pin');
  const [connector] = client;
  assert.equal(connector.isBound(), false);

  const got = await h.fetchThrough((opts) => connector.createConnection({}, opts), 80);
  assert.deepEqual(got, { status: 200, sha256: BODY_SHA, length: BODY.length });
  assert.ok(carried.offers >= 1 && carried.answers >= 1, `signals went both ways (${JSON.stringify(carried)})`);
});
