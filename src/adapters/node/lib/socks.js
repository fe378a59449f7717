'use strict';
// The SOCKS5 client side of spec/ipc.md §5, run on the application's own net.Socket: greeting
// offering methods 09 and 80, the settings block, and the CONNECT request are written in one
// piece (pthost reads each message exactly and keeps the rest, §5.1, §5.3); then the method
// selection and the reply are read. Until the reply, the socket's 'connect' is held back and
// the bytes read are kept from the application; afterwards the socket is untouched.

const net = require('node:net');
const { domainToASCII } = require('node:url');
const { Readable } = require('node:stream');
const { replyError, protocolError, makeError } = require('./errors');
const { ipv6Bytes, formatIPv6 } = require('./ip');

const METHOD_JSON = 0x09; // PT 2.1/3.0 JSON Parameter Block
const METHOD_JSON_DRAFT = 0x80; // PT 2.0 draft 2, same format

/** The destination as SOCKS5 ATYP + address + port (spec/ipc.md §5.5). */
function encodeDestination(host, port) {
  const p = Buffer.from([(port >> 8) & 0xff, port & 0xff]);
  const kind = net.isIP(host);
  if (kind === 4) return Buffer.concat([Buffer.from([0x01]), Buffer.from(host.split('.').map(Number)), p]);
  if (kind === 6) {
    return Buffer.concat([Buffer.from([0x04]), ipv6Bytes(host), p]);
  }
  const name = Buffer.from(/^[\x00-\x7f]*$/.test(host) ? host : domainToASCII(host), 'ascii');
  if (name.length === 0 || name.length > 255) throw new RangeError(`host name "${host}" must have 1 to 255 characters`);
  return Buffer.concat([Buffer.from([0x03, name.length]), name, p]);
}

/** Greeting, settings block and request in one buffer. */
function buildHandshake(settings, host, port) {
  const json = settings === undefined || settings === null ? Buffer.alloc(0) : Buffer.from(JSON.stringify(settings), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(json.length, 0);
  return Buffer.concat([
    Buffer.from([0x05, 0x02, METHOD_JSON, METHOD_JSON_DRAFT]),
    len, json,
    Buffer.from([0x05, 0x01, 0x00]), encodeDestination(host, port),
  ]);
}

/**
 * Parses the server's side: `05 <method>` then `05 REP 00 ATYP BND.ADDR BND.PORT`.
 * Returns { need } while incomplete, { error } on failure, { done, consumed } on success.
 */
function parseResponse(buf, host, port) {
  if (buf.length < 2) return { need: true };
  if (buf[0] !== 0x05) return { error: protocolError(`SOCKS5: bad version byte ${buf[0]} from pthost`, host, port) };
  const method = buf[1];
  if (method === 0xff) return { error: makeError('SOCKS5: pthost accepted none of the methods 09, 80', 'EPROTO', { syscall: 'connect', address: host, port }) };
  if (method !== METHOD_JSON && method !== METHOD_JSON_DRAFT) {
    return { error: protocolError(`SOCKS5: pthost selected method ${method}, which was not offered`, host, port) };
  }
  if (buf.length < 4) return { need: true };
  if (buf[2] !== 0x05) return { error: protocolError(`SOCKS5: bad reply version ${buf[2]}`, host, port) };
  const rep = buf[3];
  if (rep !== 0x00) return { error: replyError(rep, host, port) };
  if (buf.length < 6) return { need: true };
  const atyp = buf[5];
  let size;
  if (atyp === 0x01) size = 4 + 6;
  else if (atyp === 0x04) size = 16 + 6;
  else if (atyp === 0x03) {
    if (buf.length < 7) return { need: true };
    size = 1 + buf[6] + 6;
  } else return { error: protocolError(`SOCKS5: bad address type ${atyp} in the reply`, host, port) };
  if (buf.length < 2 + size) return { need: true };
  return { done: true, consumed: 2 + size, bound: boundAddress(buf.subarray(5, 2 + size)) };
}

/** BND.ADDR:BND.PORT of a success reply (ATYP and what follows) as { host, port }. */
function boundAddress(b) {
  const port = b.readUInt16BE(b.length - 2);
  if (b[0] === 0x01) return { host: `${b[1]}.${b[2]}.${b[3]}.${b[4]}`, port };
  if (b[0] === 0x04) return { host: formatIPv6(b.subarray(1, 17)), port };
  return { host: b.subarray(2, 2 + b[1]).toString('latin1'), port };
}

/**
 * Runs the handshake on `socket` (connected by the caller to `proxy`), then hands the socket
 * back to the application: 'connect' and 'ready' are emitted, bytes past the reply are pushed.
 * `proc` is the pthost process (its death turns the socket's end of stream into an error).
 */
function socksConnect(socket, proxy, settings, host, port, proc) {
  let handshake;
  try {
    handshake = buildHandshake(settings, host, port);
  } catch (err) {
    process.nextTick(() => socket.destroy(err));
    return;
  }
  const realEmit = socket.emit;
  let received = Buffer.alloc(0);
  let phase = 'connecting'; // connecting → handshake → open

  const finish = (err, rest) => {
    phase = 'open';
    delete socket.emit;
    if (err) {
      socket.destroy(err);
      return;
    }
    socket.connecting = false;
    realEmit.call(socket, 'connect');
    realEmit.call(socket, 'ready');
    if (rest && rest.length > 0) Readable.prototype.push.call(socket, rest);
  };

  // Hold back 'connect'/'ready' until the reply (the socket stays `connecting`, so net keeps
  // the application's writes and end() pending until then).
  socket.emit = function emit(event, ...args) {
    if (phase !== 'open' && (event === 'connect' || event === 'ready')) {
      if (event === 'connect' && phase === 'connecting') {
        phase = 'handshake';
        // Straight to the handle: an application write made before 'connect' is already
        // waiting at the head of the stream's queue and must come after the handshake.
        socket._writeGeneric(false, handshake, 'buffer', (err) => {
          if (err && phase !== 'open') finish(err);
        });
        // Read the handle now, as net's own first read would (tryReadStart): a read the
        // application asked for before 'connect' is parked until 'connect' by net.
        if (!socket._handle.reading) {
          socket._handle.reading = true;
          const err = socket._handle.readStart();
          if (err) {
            finish(makeError(`SOCKS5: cannot read from pthost (${err})`, 'EIO', { syscall: 'read' }));
            return true;
          }
        }
        socket.connecting = true;
      }
      return true;
    }
    return realEmit.call(this, event, ...args);
  };

  // Bytes from pthost: the handshake's until the reply is complete; after that, the
  // application's. End of stream from a pthost that is dying is an error (spec/adapters.md).
  socket.push = function push(chunk, encoding) {
    if (chunk === null) {
      if (phase !== 'open') {
        // An end before the reply is a general failure (01), unless pthost is exiting.
        finish(proc.isDying() ? proc.lostError() : replyError(0x01, host, port));
        return false;
      }
      if (proc.isDying()) {
        socket.destroy(proc.lostError());
        return false;
      }
      return Readable.prototype.push.call(this, chunk, encoding);
    }
    if (phase === 'open') return Readable.prototype.push.call(this, chunk, encoding);
    received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
    const r = parseResponse(received, host, port);
    if (r.error) finish(r.error);
    else if (r.done) {
      socket.socksBoundAddress = r.bound; // spec/adapters.md §2.2: the reply's BND.ADDR:BND.PORT
      finish(null, received.subarray(r.consumed));
    }
    return true;
  };

  socket.connect(proxy.port, proxy.host);
}

module.exports = { socksConnect, buildHandshake, parseResponse, encodeDestination };
