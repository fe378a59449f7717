'use strict';
// A TURN client (RFC 5766) shaped like dgram.Socket: the seed's UDPConnector.createUDPSocket
// (PT 2.0 draft 1 §3.2.5.3). It allocates on pthost's TURN listener with long-term credentials
// (spec/turn.md §3.3), installs a permission (CreatePermission) and binds a channel
// (ChannelBind) for each peer, refreshes both, and carries datagrams as ChannelData; Data
// indications from peers without a channel are read as well.

const crypto = require('node:crypto');
const dgram = require('node:dgram');
const dns = require('node:dns');
const net = require('node:net');
const { EventEmitter } = require('node:events');
const stun = require('./stun');
const { makeError } = require('./errors');

const { Method, Class, Attr } = stun;
const RTO_MS = 500; // RFC 5389 §7.2.1: initial RTO, doubled per retransmission
const MAX_SENDS = 7; // RFC 5389 §7.2.1: Rc
const CHANNEL_REFRESH_MS = 240 * 1000; // below the 300 s permission lifetime (spec/turn.md §4)
const PEER_QUEUE = 256; // datagrams waiting for a channel, per peer (as UDP: more are dropped)
const LAST_WAIT_MS = 8000; // RFC 5389 §7.2.1: Rm × RTO after the last send (39.5 s in all)
const MAX_PAYLOAD = 65527; // spec/turn.md §5.2: largest datagram a frame carries
const METHOD_NAMES = {
  [Method.Allocate]: 'Allocate', [Method.Refresh]: 'Refresh', [Method.CreatePermission]: 'CreatePermission', [Method.ChannelBind]: 'ChannelBind',
};

function turnError(method, code, reason) {
  return makeError(`TURN ${METHOD_NAMES[method] || method} failed: ${code} ${reason}`.trim(), `ERR_TURN_${code}`, { turnCode: code });
}

/** dgram.Socket#send's argument forms, resolved as dgram resolves them → { data, port, address, callback }. */
function sendArguments(args, defaultPeer) {
  let [msg, offset, length, port, address, callback] = args;
  const slice = (m) => (offset === undefined ? m : m.subarray(offset, offset + length));
  const bytes = (m) => (typeof m === 'string' ? Buffer.from(m) : Buffer.from(m.buffer, m.byteOffset, m.byteLength));
  let list = (Array.isArray(msg) ? msg : [msg]).map(bytes);
  if (!defaultPeer) {
    if (address || (port && typeof port !== 'function')) {
      if (!Array.isArray(msg)) list = [slice(list[0])];
    } else {
      callback = port;
      port = offset;
      address = length;
    }
  } else {
    if (typeof length === 'number') {
      if (!Array.isArray(msg)) list = [slice(list[0])];
      if (typeof port === 'function') callback = port;
    } else {
      callback = offset;
    }
    ({ port, address } = defaultPeer);
  }
  if (typeof address === 'function') {
    callback = address;
    address = undefined;
  }
  return { data: list, port, address, callback: typeof callback === 'function' ? callback : undefined };
}

class TurnSocket extends EventEmitter {
  /**
   * @param {string|object} options 'udp4' | 'udp6' | { type } (as dgram.createSocket)
   * @param {{ username, password }} credentials one of pthost's `turn.users`
   * @param {() => Promise<{host, port}>} server resolves to pthost's TURN address
   */
  constructor(options, credentials, server) {
    super();
    const type = typeof options === 'string' ? options : (options && options.type) || 'udp4';
    if (type !== 'udp4' && type !== 'udp6') throw new TypeError(`socket type must be "udp4" or "udp6", not "${type}"`);
    this.type = type;
    this._credentials = credentials;
    this._server = server;
    this._state = 'idle'; // idle → allocating → listening → closed
    this._udp = null;
    this._relayed = null;
    this._realm = null;
    this._nonce = null;
    this._key = null;
    this._transactions = new Map();
    this._peers = new Map(); // "address|port" → { address, port, family, channel, state, queue }
    this._channels = new Map(); // channel number → peer
    this._nextChannel = 0x4000;
    this._refreshTimer = null;
    this._channelTimer = null;
    this._defaultPeer = null;
    this._refed = true;
    // Refresh period of the allocation, permissions and channels; shorter only for tests.
    this._refreshMs = options && typeof options === 'object' && options.refreshInterval > 0 ? options.refreshInterval : null;
    /** Completed refreshes (allocation, permission and channel requests answered). */
    this.refreshes = 0;
  }

  // --- dgram.Socket surface ---

  bind(...args) {
    const cb = args.find((x) => typeof x === 'function');
    if (cb) this.once('listening', cb);
    this._allocate();
    return this;
  }

  /** The relayed transport address (XOR-RELAYED-ADDRESS): where peers see this socket. */
  address() {
    if (!this._relayed) throw makeError('Not running', 'ERR_SOCKET_DGRAM_NOT_RUNNING');
    return { ...this._relayed };
  }

  connect(port, address, callback) {
    if (typeof address === 'function') { callback = address; address = undefined; }
    if (this._defaultPeer) throw makeError('Already connected', 'ERR_SOCKET_DGRAM_IS_CONNECTED');
    this._defaultPeer = { port, address: address || this._loopback() };
    if (callback) process.nextTick(callback);
    process.nextTick(() => this.emit('connect'));
  }

  disconnect() {
    if (!this._defaultPeer) throw makeError('Not connected', 'ERR_SOCKET_DGRAM_NOT_CONNECTED');
    this._defaultPeer = null;
  }

  remoteAddress() {
    if (!this._defaultPeer) throw makeError('Not connected', 'ERR_SOCKET_DGRAM_NOT_CONNECTED');
    return { address: this._defaultPeer.address, family: net.isIP(this._defaultPeer.address) === 6 ? 'IPv6' : 'IPv4', port: this._defaultPeer.port };
  }

  send(...args) {
    const { data, port, address, callback } = sendArguments(args, this._defaultPeer);
    const fail = (err) => {
      if (callback) process.nextTick(callback, err);
      else process.nextTick(() => this.emit('error', err));
    };
    if (this._state === 'closed') { fail(makeError('Not running', 'ERR_SOCKET_DGRAM_NOT_RUNNING')); return; }
    if (!Number.isInteger(port) || port <= 0 || port > 65535) { fail(new RangeError(`port must be 1..65535, not ${port}`)); return; }
    if (data.reduce((n, d) => n + d.length, 0) > MAX_PAYLOAD) { fail(makeError(`a datagram over TURN carries at most ${MAX_PAYLOAD} bytes`, 'EMSGSIZE')); return; }
    const host = address || this._loopback();
    // An IPv4-mapped IPv6 peer is the IPv4 peer (spec/adapters.md §2.8 item 8).
    const go = (ip) => this._sendTo(ip.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1'), port, data, callback, fail);
    if (net.isIP(host)) go(host);
    else {
      dns.lookup(host, { family: this.type === 'udp6' ? 6 : 4 }, (err, ip) => (err ? fail(err) : go(ip)));
    }
    if (this._state === 'idle') this._allocate();
  }

  close(callback) {
    if (callback) this.once('close', callback);
    if (this._state === 'closed') return this;
    const wasListening = this._state === 'listening';
    this._state = 'closed';
    this._stopTimers();
    for (const t of this._transactions.values()) clearTimeout(t.timer);
    this._transactions.clear();
    const udp = this._udp;
    const done = () => {
      if (udp) udp.close();
      process.nextTick(() => this.emit('close'));
    };
    if (wasListening && udp) {
      // Refresh with LIFETIME 0 deletes the allocation at once (spec/turn.md §3.4).
      const msg = stun.encode(Method.Refresh, Class.Request, crypto.randomBytes(12), this._authAttrs([[Attr.LIFETIME, stun.u32(0)]]), this._key, true);
      udp.send(msg, () => done());
    } else {
      done();
    }
    return this;
  }

  ref() {
    this._refed = true;
    if (this._udp) this._udp.ref();
    return this;
  }

  unref() {
    this._refed = false;
    if (this._udp) this._udp.unref();
    return this;
  }

  setRecvBufferSize(n) { this._udpOrThrow().setRecvBufferSize(n); }
  setSendBufferSize(n) { this._udpOrThrow().setSendBufferSize(n); }
  getRecvBufferSize() { return this._udpOrThrow().getRecvBufferSize(); }
  getSendBufferSize() { return this._udpOrThrow().getSendBufferSize(); }

  // --- allocation (RFC 5766 §6, spec/turn.md §3.4) ---

  _udpOrThrow() {
    if (!this._udp) throw makeError('Not running', 'ERR_SOCKET_DGRAM_NOT_RUNNING');
    return this._udp;
  }

  _loopback() {
    return this.type === 'udp6' ? '::1' : '127.0.0.1';
  }

  _allocate() {
    if (this._state !== 'idle') return;
    this._state = 'allocating';
    this._server().then((server) => new Promise((resolve, reject) => {
      if (this._state === 'closed') return;
      if (!this._credentials) {
        throw makeError('no TURN credentials: the configuration\'s turn has no users', 'ERR_PTHOST_NO_TURN');
      }
      const udp = dgram.createSocket(net.isIP(server.host) === 6 ? 'udp6' : 'udp4');
      this._udp = udp;
      if (!this._refed) udp.unref();
      udp.on('message', (buf) => this._onPacket(buf));
      udp.on('error', (err) => this._fail(err));
      udp.connect(server.port, server.host, (err) => (err ? reject(err) : resolve()));
    })).then(() => this._request(Method.Allocate, [[Attr.REQUESTED_TRANSPORT, Buffer.from([17, 0, 0, 0])], [Attr.LIFETIME, stun.u32(600)]]))
      .then((res) => {
        if (this._state === 'closed') return;
        this._relayed = stun.readXorAddress(res.attrs.get(Attr.XOR_RELAYED_ADDRESS) || Buffer.alloc(0), res.tid);
        const lifetime = this._lifetime(res);
        this._state = 'listening';
        this._scheduleRefresh(lifetime);
        this._channelTimer = setInterval(() => this._refreshChannels(), this._refreshMs || CHANNEL_REFRESH_MS);
        this._channelTimer.unref();
        this.emit('listening');
        for (const peer of this._peers.values()) if (peer.state === 'waiting') this._bindChannel(peer);
      })
      .catch((err) => this._fail(err));
  }

  _lifetime(res) {
    const v = res.attrs.get(Attr.LIFETIME);
    return v && v.length === 4 ? v.readUInt32BE(0) : 600;
  }

  _scheduleRefresh(lifetime) {
    clearTimeout(this._refreshTimer);
    const ms = this._refreshMs || Math.max(lifetime - 60, lifetime / 2) * 1000;
    this._refreshTimer = setTimeout(() => {
      this._request(Method.Refresh, [[Attr.LIFETIME, stun.u32(600)]])
        .then((res) => { this.refreshes++; this._scheduleRefresh(this._lifetime(res)); }, (err) => this._fail(err));
    }, ms);
    this._refreshTimer.unref();
  }

  /** Permissions last 300 s, channels 600 s (spec/turn.md §4): both refreshed every 240 s. */
  _refreshChannels() {
    for (const peer of this._peers.values()) {
      if (peer.state === 'bound') {
        this._request(Method.CreatePermission, [[Attr.XOR_PEER_ADDRESS, null]], peer)
          .then(() => this._request(Method.ChannelBind, this._channelAttrs(peer), peer))
          .then(() => { this.refreshes++; }, (err) => this._fail(err));
      }
    }
  }

  _stopTimers() {
    clearTimeout(this._refreshTimer);
    clearInterval(this._channelTimer);
  }

  /** Ends the socket with an error (allocation refused, pthost gone). */
  _fail(err) {
    if (this._state === 'closed') return;
    for (const peer of this._peers.values()) {
      for (const [, cb] of peer.queue) if (cb) process.nextTick(cb, err);
      peer.queue = [];
    }
    this._state = 'closed';
    this._stopTimers();
    for (const t of this._transactions.values()) clearTimeout(t.timer);
    this._transactions.clear();
    if (this._udp) this._udp.close();
    this.emit('error', err);
    process.nextTick(() => this.emit('close'));
  }

  // --- peers and channels (RFC 5766 §11) ---

  _sendTo(ip, port, data, callback, fail) {
    if (this._state === 'closed') { fail(makeError('Not running', 'ERR_SOCKET_DGRAM_NOT_RUNNING')); return; }
    const key = `${ip}|${port}`;
    let peer = this._peers.get(key);
    if (!peer) {
      if (this._nextChannel > 0x7fff) { fail(makeError('no TURN channel numbers left', 'ERR_TURN_508')); return; }
      peer = { address: ip, port, family: net.isIP(ip) === 6 ? 'IPv6' : 'IPv4', channel: this._nextChannel++, state: 'waiting', queue: [] };
      this._peers.set(key, peer);
      this._channels.set(peer.channel, peer);
      if (this._state === 'listening') this._bindChannel(peer);
    }
    if (peer.state === 'bound') this._channelData(peer, data, callback);
    else if (peer.state === 'failed') fail(peer.error);
    else if (peer.queue.length < PEER_QUEUE) peer.queue.push([data, callback]);
    else if (callback) process.nextTick(callback, null); // dropped, as UDP drops
  }

  _channelAttrs(peer) {
    const ch = Buffer.alloc(4);
    ch.writeUInt16BE(peer.channel, 0);
    return [[Attr.CHANNEL_NUMBER, ch], [Attr.XOR_PEER_ADDRESS, null]];
  }

  /** RFC 5766 §9 CreatePermission, then §11 ChannelBind; datagrams wait meanwhile. */
  _bindChannel(peer) {
    peer.state = 'binding';
    this._request(Method.CreatePermission, [[Attr.XOR_PEER_ADDRESS, null]], peer)
      .then(() => this._request(Method.ChannelBind, this._channelAttrs(peer), peer)).then(() => {
      peer.state = 'bound';
      const queue = peer.queue;
      peer.queue = [];
      for (const [data, cb] of queue) this._channelData(peer, data, cb);
    }, (err) => {
      peer.state = 'failed';
      peer.error = err;
      const queue = peer.queue;
      peer.queue = [];
      let reported = false;
      for (const [, cb] of queue) {
        if (cb) { reported = true; process.nextTick(cb, err); }
      }
      if (!reported && this._state !== 'closed') this.emit('error', err);
    });
  }

  _channelData(peer, data, callback) {
    let len = 0;
    for (const d of data) len += d.length;
    const header = Buffer.allocUnsafe(4);
    header.writeUInt16BE(peer.channel, 0);
    header.writeUInt16BE(len, 2);
    this._udp.send([header, ...data], callback ? (err) => callback(err || null, len) : undefined);
  }

  // --- transactions (RFC 5389 §7.2.1 retransmission, §10.2 long-term credentials) ---

  _authAttrs(attrs) {
    if (!this._nonce) return attrs;
    return [
      ...attrs,
      [Attr.USERNAME, Buffer.from(this._credentials.username, 'utf8')],
      [Attr.REALM, Buffer.from(this._realm, 'utf8')],
      [Attr.NONCE, Buffer.from(this._nonce, 'utf8')],
    ];
  }

  _request(method, attrs, peer, attempt = 0) {
    return new Promise((resolve, reject) => {
      if (this._state === 'closed') {
        reject(makeError('Not running', 'ERR_SOCKET_DGRAM_NOT_RUNNING'));
        return;
      }
      const tid = crypto.randomBytes(12);
      const concrete = attrs.map(([t, v]) => (t === Attr.XOR_PEER_ADDRESS && v === null ? [t, stun.xorAddress(peer.address, peer.port, tid)] : [t, v]));
      const packet = stun.encode(method, Class.Request, tid, this._authAttrs(concrete), this._nonce ? this._key : null, true);
      const key = tid.toString('hex');
      const t = { method, resolve, reject, sends: 0, timer: null };
      const transmit = () => {
        if (t.sends >= MAX_SENDS) {
          this._transactions.delete(key);
          reject(makeError(`TURN ${METHOD_NAMES[method] || method}: no answer from pthost`, 'ETIMEDOUT'));
          return;
        }
        t.sends++;
        t.timer = setTimeout(transmit, t.sends < MAX_SENDS ? RTO_MS << (t.sends - 1) : LAST_WAIT_MS);
        t.timer.unref();
        this._udp.send(packet);
      };
      this._transactions.set(key, t);
      t.onResponse = (msg) => {
        clearTimeout(t.timer);
        this._transactions.delete(key);
        if (msg.cls === Class.Success) {
          if (this._key && this._nonce && !stun.verifyIntegrity(msg, this._key)) {
            reject(makeError('TURN response failed its MESSAGE-INTEGRITY check', 'EPROTO'));
            return;
          }
          resolve(msg);
          return;
        }
        const { code, reason } = stun.errorCode(msg);
        const realm = msg.attrs.get(Attr.REALM);
        const nonce = msg.attrs.get(Attr.NONCE);
        // 401 (first request, no credentials yet) and 438 (stale nonce): once more with the new nonce.
        if ((code === 401 && !this._nonce) || code === 438) {
          if (realm && nonce && attempt < 2) {
            this._realm = realm.toString('utf8');
            this._nonce = nonce.toString('utf8');
            this._key = stun.longTermKey(this._credentials.username, this._realm, this._credentials.password);
            this._request(method, attrs, peer, attempt + 1).then(resolve, reject);
            return;
          }
        }
        reject(turnError(method, code, reason));
      };
      transmit();
    });
  }

  _onPacket(buf) {
    if (buf.length >= 4 && (buf[0] & 0xc0) === 0x40) {
      // ChannelData (RFC 5766 §11.4)
      const peer = this._channels.get(buf.readUInt16BE(0));
      const len = buf.readUInt16BE(2);
      if (!peer || 4 + len > buf.length) return;
      this.emit('message', buf.subarray(4, 4 + len), { address: peer.address, family: peer.family, port: peer.port, size: len });
      return;
    }
    const msg = stun.decode(buf);
    if (!msg) return;
    if (msg.method === Method.Data && msg.cls === Class.Indication) {
      const from = stun.readXorAddress(msg.attrs.get(Attr.XOR_PEER_ADDRESS) || Buffer.alloc(0), msg.tid);
      const data = msg.attrs.get(Attr.DATA);
      if (from && data) this.emit('message', data, { ...from, size: data.length });
      return;
    }
    if (msg.cls === Class.Success || msg.cls === Class.Error) {
      const t = this._transactions.get(msg.tid.toString('hex'));
      if (t && t.method === msg.method) t.onResponse(msg);
    }
  }
}

module.exports = { TurnSocket, sendArguments };
