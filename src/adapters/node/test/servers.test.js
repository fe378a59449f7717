'use strict';
// A free server (createProxy with allow) and a bound server (createServer) whose sessions reach
// the test's own listener.

const test = require('node:test');
const assert = require('node:assert/strict');
const pthost = require('pthost');
const h = require('./helpers');

function roundTrip(socket, text) {
  return new Promise((resolve, reject) => {
    let got = '';
    socket.setEncoding('utf8');
    socket.on('data', (d) => {
      got += d;
      if (got.length >= text.length) resolve(got);
    });
    socket.on('error', reject);
    socket.write(text);
  });
}

function connected(socket) {
  return new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
}

function failure(socket) {
  return new Promise((resolve, reject) => {
    socket.once('connect', () => reject(new Error('connected, but a refusal was expected')));
    socket.once('error', resolve);
  });
}

test('free server: createProxy reaches what allow admits and refuses the rest with EACCES', { timeout: 60000 }, async (t) => {
  const allowed = await h.echoServer();
  const other = await h.echoServer();
  const proxy = pthost.createProxy({ transports: ['plain'], allow: [`127.0.0.1:${allowed.port}`] }, h.tempDir('free'));
  const method = await proxy.ready();
  const client = pthost.createConnector({ transports: ['plain'], options: { plain: { serverAddress: `127.0.0.1:${method.address.port}` } } });
  t.after(async () => { await h.closeAll(client, proxy); allowed.close(); other.close(); });
  const [connector] = client;
  assert.equal(connector.isBound(), false, 'with serverAddress the address is the final destination');

  const ok = connector.createConnection({}, { host: '127.0.0.1', port: allowed.port });
  await connected(ok);
  // The success reply's BND: the local address of pthost's connection to the server (spec/ipc.md §5.6).
  assert.equal(ok.socksBoundAddress.host, '127.0.0.1');
  assert.ok(ok.socksBoundAddress.port > 0);
  assert.equal(await roundTrip(ok, 'through the free server'), 'through the free server');
  ok.destroy();

  const refused = connector.createConnection({}, { host: '127.0.0.1', port: other.port });
  const err = await failure(refused);
  assert.equal(err.code, 'EACCES');
  assert.equal(err.socksReply, 0x02);

  // The settings block names the destination instead of the request (spec/plain.md §5).
  const viaSettings = connector.createConnection({ destination: `127.0.0.1:${allowed.port}` }, { host: '0.0.0.0', port: 0 });
  await connected(viaSettings);
  assert.equal(await roundTrip(viaSettings, 'named in the settings block'), 'named in the settings block');
  viaSettings.destroy();
});

test('bound server: createServer\'s connections reach the application\'s listener', { timeout: 60000 }, async (t) => {
  const accepted = [];
  const server = pthost.createServer({ transports: ['plain'] }, h.tempDir('bound'), null, {}, (socket) => {
    accepted.push(socket.remoteAddress);
    socket.pipe(socket);
  });
  const method = await server.ready();
  assert.equal(method.name, 'plain');
  assert.ok(server.listening, 'the application\'s own net.Server listens');
  // Bridge style: no serverAddress, so the address given to createConnection is the PT server.
  const client = pthost.createConnector({ transports: ['plain'] });
  t.after(async () => { await h.closeAll(client, server); });
  const [connector] = client;
  assert.equal(connector.isBound(), true);

  for (let i = 0; i < 3; i++) {
    const s = connector.createConnection({}, { host: method.address.host, port: method.address.port });
    await connected(s);
    assert.equal(await roundTrip(s, `session ${i}`), `session ${i}`);
    s.end();
  }
  assert.equal(accepted.length, 3);
  const stats = await new Promise((resolve, reject) => server.getStats((err, s) => (err ? reject(err) : resolve(s))));
  assert.equal(stats.opened, 3);
});

test('a socket used at once, before and after pthost is ready: writes, end() and reads wait for the handshake', { timeout: 60000 }, async (t) => {
  const echo = await h.echoServer();
  const proxy = pthost.createProxy({ transports: ['plain'], allow: ['127.0.0.1'] });
  const method = await proxy.ready();
  const client = pthost.createConnector({ transports: ['plain'], options: { plain: { serverAddress: `127.0.0.1:${method.address.port}` } } });
  t.after(async () => { await h.closeAll(client, proxy); echo.close(); });
  const early = async (expectState) => {
    assert.equal(client.process.state, expectState);
    const events = [];
    let remotePort = null;
    const s = client[0].createConnection({}, { host: '127.0.0.1', port: echo.port }, () => { events.push('connect'); remotePort = s.remotePort; });
    let got = '';
    s.setEncoding('utf8');
    s.on('data', (d) => { events.push('data'); got += d; }); // asks to read at once
    s.write('written before the handshake, ');
    s.end('and ended too');
    await new Promise((resolve, reject) => { s.on('end', resolve); s.on('error', reject); });
    assert.equal(got, 'written before the handshake, and ended too');
    assert.equal(events[0], 'connect', 'connect comes before any data');
    assert.equal(remotePort, client[0].address.port, 'the socket is connected to pthost itself');
  };
  await early('starting'); // made before CMETHODS DONE
  await early('ready'); // made after it, used at once
});
