'use strict';
// Errors map onto Node's: a configuration error (exit 78), CMETHOD-ERROR/SMETHOD-ERROR, SOCKS5
// failure replies, and a pthost that dies.

const test = require('node:test');
const assert = require('node:assert/strict');
const pthost = require('pthost');
const h = require('./helpers');

function failure(socket) {
  return new Promise((resolve, reject) => {
    socket.once('connect', () => reject(new Error('connected, but an error was expected')));
    socket.once('error', resolve);
  });
}

test('a configuration error (exit 78) carries pthost\'s stderr message and the key', { timeout: 30000 }, async () => {
  const client = pthost.createConnector({ transports: ['plain'], proxylistenaddr: '127.1:0' });
  const err = await client.ready().then(() => null, (e) => e);
  assert.ok(err, 'ready() rejects');
  assert.equal(err.code, 'ERR_PTHOST_CONFIG');
  assert.equal(err.exitCode, 78);
  assert.equal(err.key, 'proxylistenaddr');
  assert.match(err.message, /^pthost: config key 'proxylistenaddr': /, 'the message is pthost\'s own stderr line');
  assert.ok(err.stderr.includes(err.message));
  // A connection asked for meanwhile gets the same error.
  const socketErr = await failure(client[0].createConnection({}, { host: '127.0.0.1', port: 9 }));
  assert.equal(socketErr, err);
  assert.throws(() => pthost.createConnector({ transports: 'plain' }), TypeError);

  const server = pthost.createProxy({ transports: ['plain'] }); // a free server without allow
  const serverErr = await server.ready().then(() => null, (e) => e);
  assert.equal(serverErr.code, 'ERR_PTHOST_CONFIG');
  assert.equal(serverErr.key, 'allow');
});

test('CMETHOD-ERROR and SMETHOD-ERROR name the transport and the reason', { timeout: 30000 }, async (t) => {
  const client = pthost.createConnector({ transports: ['plain', 'zephyr'], options: { zephyr: { relay: '127.0.0.1:1' } } });
  const proxy = pthost.createProxy({ transports: ['nosuch'], allow: [] });
  t.after(() => h.closeAll(client, proxy));
  const [plain, zephyr] = client;
  await plain.ready();
  const err = await zephyr.ready().then(() => null, (e) => e);
  assert.equal(err.code, 'ERR_PTHOST_METHOD');
  assert.equal(err.transport, 'zephyr');
  assert.match(err.message, /^CMETHOD-ERROR zephyr: options\.zephyr\.serverPin: is required/);
  assert.equal(err.reason, err.message.slice('CMETHOD-ERROR zephyr: '.length));
  const socketErr = await failure(zephyr.createConnection({}, { host: '127.0.0.1', port: 9 }));
  assert.equal(socketErr.code, 'ERR_PTHOST_METHOD');

  // A server has one transport: its SMETHOD-ERROR is the start's error (pthost then exits 69).
  const serverErr = await proxy.ready().then(() => null, (e) => e);
  assert.equal(serverErr.code, 'ERR_PTHOST_METHOD');
  assert.equal(serverErr.transport, 'nosuch');
  assert.match(serverErr.message, /^SMETHOD-ERROR nosuch: no transport named "nosuch"/);
  assert.throws(() => pthost.createProxy({ transports: ['plain', 'zephyr'], allow: [] }), TypeError);
});

test('SOCKS5 failure replies become \'error\' events with a mapped code', { timeout: 60000 }, async (t) => {
  const echo = await h.echoServer();
  const proxy = pthost.createProxy({ transports: ['plain'], allow: [`127.0.0.1:${echo.port}`] });
  const method = await proxy.ready();
  const client = pthost.createConnector({ transports: ['plain'], options: { plain: { serverAddress: `127.0.0.1:${method.address.port}` } } });
  const bridge = pthost.createConnector({ transports: ['plain'] });
  t.after(async () => { await h.closeAll(client, bridge, proxy); echo.close(); });

  // 05: the bridge-style client connects to a port where nothing listens (1, tcpmux, unused).
  const refused = await failure(bridge[0].createConnection({}, { host: '127.0.0.1', port: 1 }));
  assert.equal(refused.code, 'ECONNREFUSED');
  assert.equal(refused.socksReply, 0x05);
  assert.equal(refused.syscall, 'connect');
  // 02: the free server's allow list refuses the destination.
  const denied = await failure(client[0].createConnection({}, { host: '127.0.0.1', port: echo.port + 1 === 65536 ? 1 : echo.port + 1 }));
  assert.equal(denied.code, 'EACCES');
  // 13: a setting plain does not know.
  const invalid = await failure(client[0].createConnection({ colour: 'blue' }, { host: '127.0.0.1', port: echo.port }));
  assert.equal(invalid.code, 'EINVAL');
  assert.equal(invalid.socksReply, 0x13);
  assert.deepEqual(pthost.socksReplyCodes[5], 'ECONNREFUSED');
});

test('a killed pthost: open sockets and TURN sockets error, the connector reports it', { timeout: 60000 }, async (t) => {
  const echo = await h.echoServer();
  const udpEcho = await h.udpEchoServer();
  const proxy = pthost.createProxy({ transports: ['plain'], allow: ['127.0.0.1'] });
  const method = await proxy.ready();
  const client = pthost.createConnector({ transports: ['plain'], options: { plain: { serverAddress: `127.0.0.1:${method.address.port}` } } });
  t.after(async () => { await h.closeAll(proxy); echo.close(); udpEcho.close(); });
  const [connector] = client;
  const reported = [];
  connector.on('error', (err) => reported.push(err));

  const sockets = [];
  for (let i = 0; i < 3; i++) {
    const s = connector.createConnection({}, { host: '127.0.0.1', port: echo.port });
    await new Promise((resolve, reject) => { s.once('connect', resolve); s.once('error', reject); });
    s.write('x');
    await new Promise((resolve) => s.once('data', resolve));
    sockets.push(s);
  }
  const udp = connector.createUDPSocket('udp4');
  udp.send('ping', udpEcho.port, '127.0.0.1');
  await new Promise((resolve) => udp.once('message', resolve));

  const socketErrors = sockets.map((s) => new Promise((resolve) => s.once('error', resolve)));
  const udpError = new Promise((resolve) => udp.once('error', resolve));
  const exited = new Promise((resolve) => connector.once('exit', (code, signal) => resolve(signal)));
  process.kill(client.process.pid, 'SIGKILL');

  for (const err of await Promise.all(socketErrors)) {
    assert.equal(err.code, 'ECONNRESET');
  }
  assert.equal((await udpError).code, 'ECONNRESET');
  assert.equal(await exited, 'SIGKILL');
  assert.equal(reported.length, 1);
  assert.equal(reported[0].code, 'ERR_PTHOST_EXIT');
  assert.equal(reported[0].signal, 'SIGKILL');
  const late = await failure(connector.createConnection({}, { host: '127.0.0.1', port: echo.port }));
  assert.equal(late.code, 'ERR_PTHOST_EXIT');
});

test('generateConfiguration: an unknown transport is pthost\'s usage error (exit 64)', { timeout: 30000 }, () => {
  assert.throws(() => pthost.generateConfiguration('nosuch'), (err) => {
    assert.equal(err.code, 'ERR_PTHOST_USAGE');
    assert.equal(err.exitCode, 64);
    assert.match(err.message, /^pthost: .*nosuch/);
    return true;
  });
  const { client, server } = pthost.generateConfiguration('plain');
  assert.deepEqual(client, { transports: ['plain'], options: { plain: {} } });
  assert.deepEqual(server, { transports: ['plain'], options: { plain: {} } });
});
