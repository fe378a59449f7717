'use strict';
// 1,000 UDP datagrams echoed over TURN (RFC 5766) through plain, counted.

const test = require('node:test');
const assert = require('node:assert/strict');
const pthost = require('pthost');
const h = require('./helpers');

const COUNT = 1000;
const WINDOW = 32;

test('1,000 UDP datagrams echoed over TURN through plain', { timeout: 90000 }, async (t) => {
  const echo = await h.udpEchoServer();
  const echoPort = echo.port;

  const proxy = pthost.createProxy({ transports: ['plain'], allow: ['127.0.0.1'] });
  const client = pthost.createConnector({ transports: ['plain'], options: { plain: { discover: true } } });
  client.signals.pipe(proxy.signals);
  proxy.signals.pipe(client.signals);
  const { socket, errors } = h.turnSocket(t, client, proxy, echo, 'udp4');

  // A window of datagrams in flight; one not echoed within a second is sent again (UDP may drop).
  const echoed = new Set();
  let next = 0;
  let resent = 0;
  let lastProgress = Date.now();
  const sentAt = new Map();
  const send = (i) => { sentAt.set(i, Date.now()); socket.send(`datagram ${i}`, echoPort, '127.0.0.1'); };
  const done = new Promise((resolve) => {
    socket.on('message', (msg, rinfo) => {
      assert.equal(rinfo.address, '127.0.0.1');
      assert.equal(rinfo.port, echoPort);
      assert.equal(rinfo.size, msg.length);
      const i = Number(/^datagram (\d+)$/.exec(msg.toString())[1]);
      if (echoed.has(i)) return;
      echoed.add(i);
      sentAt.delete(i);
      lastProgress = Date.now();
      if (next < COUNT) send(next++);
      if (echoed.size === COUNT) resolve();
    });
  });
  for (; next < WINDOW; next++) send(next);
  const resend = setInterval(() => {
    for (const [i, at] of sentAt) if (Date.now() - at > 1000) { resent++; send(i); }
  }, 250);
  try {
    await h.waitFor(() => echoed.size === COUNT || errors.length > 0 || Date.now() - lastProgress > 20000, 80000, 'the echoes');
    assert.deepEqual(errors, []);
    await done;
  } finally {
    clearInterval(resend);
  }
  assert.equal(echoed.size, COUNT);
  t.diagnostic(`echoed ${echoed.size} of ${COUNT}; ${resent} sent again; relayed address ${JSON.stringify(socket.address())}`);
  const stats = await new Promise((resolve, reject) => client[0].getStats((err, s) => (err ? reject(err) : resolve(s))));
  assert.equal(stats.opened, 1, 'one TURN allocation, one session (spec/turn.md §3.5)');
});

test('TURN refreshes (allocation, permission, channel) are answered and datagrams keep flowing', { timeout: 60000 }, async (t) => {
  const echo = await h.udpEchoServer();
  const proxy = pthost.createProxy({ transports: ['plain'], allow: ['127.0.0.1'] });
  const method = await proxy.ready();
  const client = pthost.createConnector({ transports: ['plain'], options: { plain: { serverAddress: `127.0.0.1:${method.address.port}` } } });
  const { socket, errors } = h.turnSocket(t, client, proxy, echo, { type: 'udp4', refreshInterval: 200 });
  const ping = (text) => new Promise((resolve) => {
    const onMessage = (msg) => { if (msg.toString() === text) { clearInterval(again); socket.off('message', onMessage); resolve(); } };
    socket.on('message', onMessage);
    const again = setInterval(() => socket.send(text, echo.port, '127.0.0.1'), 500);
    socket.send(text, echo.port, '127.0.0.1');
  });
  await ping('before');
  // Two allocation refreshes and two permission+channel refreshes at least (200 ms each).
  await h.waitFor(() => socket.refreshes >= 4 || errors.length > 0, 20000, 'four TURN refreshes');
  assert.deepEqual(errors, []);
  await ping('after');
});
