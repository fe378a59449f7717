'use strict';
// The adapter's wire pieces against the specifications' own examples (no processes).

const test = require('node:test');
const assert = require('node:assert/strict');
const { buildHandshake, parseResponse } = require('pthost/lib/socks');
const { parseLine, parseArgs } = require('pthost/lib/lines');
const stun = require('pthost/lib/stun');

test('SOCKS5: greeting offers 09 and 80; block and request follow at once (spec/ipc.md §5.3)', () => {
  const b = buildHandshake({ destination: '192.0.2.1:80' }, '127.0.0.1', 80);
  const json = Buffer.from('{"destination":"192.0.2.1:80"}');
  assert.deepEqual(b, Buffer.concat([
    Buffer.from([0x05, 0x02, 0x09, 0x80]), Buffer.from([0, 0, 0, 0x1e]), json,
    Buffer.from([0x05, 0x01, 0x00, 0x01, 0x7f, 0x00, 0x00, 0x01, 0x00, 0x50]),
  ]));
  const v6 = buildHandshake(null, '2001:db8::1', 443);
  assert.deepEqual(v6.subarray(8), Buffer.from('050100042001' + '0db8' + '0'.repeat(20) + '0001' + '01bb', 'hex'));
  const name = buildHandshake({}, 'example.com', 8080);
  assert.deepEqual(name.subarray(4 + 4 + 2), Buffer.from([0x05, 0x01, 0x00, 0x03, 11, ...Buffer.from('example.com'), 0x1f, 0x90]));
});

test('SOCKS5: replies parse, failures keep their code', () => {
  assert.deepEqual(parseResponse(Buffer.from([0x05, 0x09, 0x05, 0x00, 0x00, 0x01, 127, 0, 0, 1, 0x30]), 'h', 1), { need: true });
  const ok = parseResponse(Buffer.from([0x05, 0x09, 0x05, 0x00, 0x00, 0x01, 127, 0, 0, 1, 0x30, 0x39, 0xaa]), 'h', 1);
  assert.deepEqual(ok, { done: true, consumed: 12, bound: { host: '127.0.0.1', port: 0x3039 } });
  const refused = parseResponse(Buffer.from([0x05, 0x80, 0x05, 0x05, 0x00, 0x01, 0, 0, 0, 0, 0, 0]), 'h', 1);
  assert.equal(refused.error.code, 'ECONNREFUSED');
  assert.equal(parseResponse(Buffer.from([0x05, 0xff]), 'h', 1).error.code, 'EPROTO');
});

test('stdout lines: SMETHOD ARGS unescape, STATUS counters (spec/ipc.md §4.5, §4.7)', () => {
  assert.deepEqual(parseArgs('pin=ab\\,c,k=v\\=w,x=\\\\'), { pin: 'ab,c', k: 'v=w', x: '\\' });
  const s = parseLine('SMETHOD zephyr 127.0.0.1:4444 ARGS:pin=00ff');
  assert.deepEqual([s.transport, s.address, s.args], ['zephyr', { host: '127.0.0.1', port: 4444 }, { pin: '00ff' }]);
  assert.deepEqual(parseLine('CMETHOD plain socks5 [::1]:41234').address, { host: '::1', port: 41234 });
  const st = parseLine('STATUS TRANSPORT=plain CONNECTIONS=1 OPENED=2 FAILED=3 BYTES-IN=4 BYTES-OUT=5');
  assert.deepEqual(st.stats, { connections: 1, opened: 2, failed: 3, bytesIn: 4, bytesOut: 5 });
  assert.equal(parseLine('CMETHOD-ERROR zephyr bad options here').message, 'bad options here');
});

test('STUN: long-term MESSAGE-INTEGRITY checks, XOR addresses round-trip (RFC 5389 §15)', () => {
  const key = stun.longTermKey('user', 'realm', 'pass');
  const tid = Buffer.alloc(12, 0x42);
  const msg = stun.encode(stun.Method.Allocate, stun.Class.Request, tid, [[stun.Attr.REQUESTED_TRANSPORT, Buffer.from([17, 0, 0, 0])]], key);
  const decoded = stun.decode(msg);
  assert.equal(decoded.method, stun.Method.Allocate);
  assert.equal(decoded.cls, stun.Class.Request);
  assert.ok(stun.verifyIntegrity(decoded, key));
  assert.ok(!stun.verifyIntegrity(decoded, stun.longTermKey('user', 'realm', 'other')));
  assert.equal(msg.readUInt16BE(0), 0x0003);
  assert.equal(stun.messageType(stun.Method.ChannelBind, stun.Class.Success), 0x0109);
  assert.equal(stun.messageType(stun.Method.Data, stun.Class.Indication), 0x0017);
  for (const [host, port] of [['192.0.2.1', 3478], ['2001:db8::2', 5349]]) {
    assert.deepEqual(stun.readXorAddress(stun.xorAddress(host, port, tid), tid).address, host);
  }
});
