'use strict';
// STUN messages (RFC 5389 §6, §15) with the TURN attributes of RFC 5766 §14, as pthost's TURN
// front end speaks them (spec/turn.md §3). Pure functions over Buffers.

const crypto = require('node:crypto');
const net = require('node:net');
const { ipv6Bytes, formatIPv6 } = require('./ip');

const MAGIC = 0x2112a442;

const Method = { Binding: 0x001, Allocate: 0x003, Refresh: 0x004, Send: 0x006, Data: 0x007, CreatePermission: 0x008, ChannelBind: 0x009 };
const Class = { Request: 0x00, Indication: 0x10, Success: 0x100, Error: 0x110 };
const Attr = {
  USERNAME: 0x0006, MESSAGE_INTEGRITY: 0x0008, ERROR_CODE: 0x0009, CHANNEL_NUMBER: 0x000c, LIFETIME: 0x000d,
  XOR_PEER_ADDRESS: 0x0012, DATA: 0x0013, REALM: 0x0014, NONCE: 0x0015, XOR_RELAYED_ADDRESS: 0x0016,
  REQUESTED_TRANSPORT: 0x0019, XOR_MAPPED_ADDRESS: 0x0020, SOFTWARE: 0x8022, FINGERPRINT: 0x8028,
};

/** Message type from method and class (RFC 5389 §6: the class bits interleave the method bits). */
function messageType(method, cls) {
  return (method & 0x000f) | ((method & 0x0070) << 1) | ((method & 0x0f80) << 2) | cls;
}

function splitType(type) {
  const cls = type & 0x0110;
  const method = (type & 0x000f) | ((type & 0x00e0) >> 1) | ((type & 0x3e00) >> 2);
  return { method, cls };
}

/** Long-term credential key (RFC 5389 §15.4): MD5(username ":" realm ":" password). */
function longTermKey(username, realm, password) {
  return crypto.createHash('md5').update(`${username}:${realm}:${password}`, 'utf8').digest();
}

function xorAddress(host, port, tid) {
  const family = net.isIP(host);
  if (family === 4) {
    const b = Buffer.alloc(8);
    b[1] = 0x01;
    b.writeUInt16BE(port ^ (MAGIC >>> 16), 2);
    const o = host.split('.').map(Number);
    b.writeUInt32BE((((o[0] << 24) | (o[1] << 16) | (o[2] << 8) | o[3]) ^ MAGIC) >>> 0, 4);
    return b;
  }
  if (family === 6) {
    const b = Buffer.alloc(20);
    b[1] = 0x02;
    b.writeUInt16BE(port ^ (MAGIC >>> 16), 2);
    const raw = ipv6Bytes(host);
    const mask = Buffer.alloc(16);
    mask.writeUInt32BE(MAGIC, 0);
    tid.copy(mask, 4);
    for (let i = 0; i < 16; i++) b[4 + i] = raw[i] ^ mask[i];
    return b;
  }
  throw new TypeError(`not an IP address: ${host}`);
}

function readXorAddress(value, tid) {
  if (value.length < 8) return null;
  const family = value[1];
  const port = value.readUInt16BE(2) ^ (MAGIC >>> 16);
  if (family === 0x01 && value.length === 8) {
    const a = (value.readUInt32BE(4) ^ MAGIC) >>> 0;
    return { address: `${a >>> 24}.${(a >>> 16) & 0xff}.${(a >>> 8) & 0xff}.${a & 0xff}`, family: 'IPv4', port };
  }
  if (family === 0x02 && value.length === 20) {
    const mask = Buffer.alloc(16);
    mask.writeUInt32BE(MAGIC, 0);
    tid.copy(mask, 4);
    const raw = Buffer.alloc(16);
    for (let i = 0; i < 16; i++) raw[i] = value[4 + i] ^ mask[i];
    return { address: formatIPv6(raw), family: 'IPv6', port };
  }
  return null;
}

// CRC-32 (ISO 3309, as zlib), for FINGERPRINT (RFC 5389 §15.5).
const CRC_TABLE = new Int32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});

function crc32(buf) {
  let c = -1;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

/** Appends FINGERPRINT: CRC-32 of the message up to it, length covering it, XOR 0x5354554e. */
function withFingerprint(msg) {
  const out = Buffer.alloc(msg.length + 8);
  msg.copy(out, 0);
  out.writeUInt16BE(msg.length + 8 - 20, 2);
  out.writeUInt16BE(Attr.FINGERPRINT, msg.length);
  out.writeUInt16BE(4, msg.length + 2);
  out.writeUInt32BE((crc32(out.subarray(0, msg.length)) ^ 0x5354554e) >>> 0, msg.length + 4);
  return out;
}

/**
 * Builds a message. `attrs` is a list of [type, Buffer]. With `key`, MESSAGE-INTEGRITY is added
 * (RFC 5389 §15.4: HMAC-SHA1 over the message with the length covering the attribute); with
 * `fingerprint`, FINGERPRINT after it (§15.5).
 */
function encode(method, cls, tid, attrs, key, fingerprint) {
  const msg = encodeBody(method, cls, tid, attrs, key);
  return fingerprint ? withFingerprint(msg) : msg;
}

function encodeBody(method, cls, tid, attrs, key) {
  const parts = [];
  let len = 0;
  for (const [type, value] of attrs) {
    const pad = (4 - (value.length % 4)) % 4;
    const h = Buffer.alloc(4);
    h.writeUInt16BE(type, 0);
    h.writeUInt16BE(value.length, 2);
    parts.push(h, value);
    if (pad) parts.push(Buffer.alloc(pad));
    len += 4 + value.length + pad;
  }
  const header = Buffer.alloc(20);
  header.writeUInt16BE(messageType(method, cls), 0);
  header.writeUInt32BE(MAGIC, 4);
  tid.copy(header, 8);
  if (!key) {
    header.writeUInt16BE(len, 2);
    return Buffer.concat([header, ...parts]);
  }
  header.writeUInt16BE(len + 24, 2);
  const body = Buffer.concat([header, ...parts]);
  const mac = crypto.createHmac('sha1', key).update(body).digest();
  const mi = Buffer.alloc(4);
  mi.writeUInt16BE(Attr.MESSAGE_INTEGRITY, 0);
  mi.writeUInt16BE(20, 2);
  return Buffer.concat([body, mi, mac]);
}

/** Parses a STUN message, or returns null (RFC 5389 §7.3: not STUN, or malformed). */
function decode(buf) {
  if (buf.length < 20 || (buf[0] & 0xc0) !== 0 || buf.readUInt32BE(4) !== MAGIC) return null;
  const len = buf.readUInt16BE(2);
  if (len % 4 !== 0 || 20 + len !== buf.length) return null;
  const { method, cls } = splitType(buf.readUInt16BE(0));
  const tid = buf.subarray(8, 20);
  const attrs = new Map();
  let integrityOffset = -1;
  for (let off = 20; off + 4 <= buf.length;) {
    const type = buf.readUInt16BE(off);
    const vlen = buf.readUInt16BE(off + 2);
    if (off + 4 + vlen > buf.length) return null;
    if (!attrs.has(type)) attrs.set(type, buf.subarray(off + 4, off + 4 + vlen));
    if (type === Attr.MESSAGE_INTEGRITY) integrityOffset = off;
    off += 4 + vlen + ((4 - (vlen % 4)) % 4);
  }
  return { method, cls, tid, attrs, raw: buf, integrityOffset };
}

/** Checks MESSAGE-INTEGRITY of a decoded message with `key`. */
function verifyIntegrity(msg, key) {
  if (msg.integrityOffset < 0) return false;
  const copy = Buffer.from(msg.raw.subarray(0, msg.integrityOffset));
  copy.writeUInt16BE(msg.integrityOffset + 24 - 20, 2);
  const mac = crypto.createHmac('sha1', key).update(copy).digest();
  return crypto.timingSafeEqual(mac, msg.raw.subarray(msg.integrityOffset + 4, msg.integrityOffset + 24));
}

function errorCode(msg) {
  const v = msg.attrs.get(Attr.ERROR_CODE);
  if (!v || v.length < 4) return { code: 0, reason: '' };
  return { code: (v[2] & 0x07) * 100 + v[3], reason: v.subarray(4).toString('utf8') };
}

function u32(n) {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

module.exports = {
  crc32,
  MAGIC, Method, Class, Attr, encode, decode, verifyIntegrity, errorCode, longTermKey, xorAddress, readXorAddress, u32, messageType, splitType,
};
