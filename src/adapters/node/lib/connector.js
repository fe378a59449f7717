'use strict';
// Client side of the seed's JavaScript interface (PT 2.0 draft 1 §3.2.5.1, §3.2.5.3):
// createConnector(configuration, localStorage, signals) → [Connector], one per transport of one
// pthost client process. Each Connector is also the seed's UDPConnector.

const net = require('node:net');
const crypto = require('node:crypto');
const { EventEmitter } = require('node:events');
const { PtHostProcess } = require('./process');
const { ownSignals } = require('./signals');
const { socksConnect } = require('./socks');
const { TurnSocket } = require('./turn');
const { makeError } = require('./errors');

/**
 * Whether the address given to createConnection names the PT server (bound: the transport has
 * no server address of its own) or the final destination (free). spec/adapters.md, "isBound".
 */
function transportIsBound(name, options) {
  const o = options !== null && typeof options === 'object' ? options : {};
  if (name === 'zephyr' || name === 'jet') return false; // the relays are the meeting point
  if (name === 'plain') return !(o.serverAddress || o.discover === true);
  return !o.serverAddress; // asport, rud, external, external_<m>, plugins
}

// Socket options of net.createConnection that apply to the application's socket.
function applySocketOptions(socket, options) {
  if (options.noDelay) socket.setNoDelay(true);
  if (options.keepAlive) socket.setKeepAlive(true, options.keepAliveInitialDelay || 0);
  if (typeof options.timeout === 'number') socket.setTimeout(options.timeout);
}

class Connector extends EventEmitter {
  constructor(proc, name) {
    super();
    /** The transport's name (the seed's `name`). */
    this.name = name;
    this.process = proc;
    const options = proc.configuration.options && proc.configuration.options[name];
    this._bound = transportIsBound(name, options);
    proc.on('exit', (code, signal) => this.emit('exit', code, signal));
    proc.on('ready', () => this.emit('ready'));
    // 'error' only to listeners: every socket and ready() report the failure as well.
    proc.on('error', (err) => {
      if (this.listenerCount('error') > 0) this.emit('error', err);
    });
  }

  /** The seed's isBound(): see transportIsBound. */
  isBound() {
    return this._bound;
  }

  /** pthost's SOCKS5 address for this transport, once ready ({ host, port }). */
  get address() {
    const m = this.process.methods.get(this.name);
    return m && m.address ? { ...m.address } : null;
  }

  /** pthost's TURN address for this transport, once ready, or null. */
  get turnAddress() {
    const m = this.process.methods.get(this.name);
    return m && m.turn ? { ...m.turn } : null;
  }

  /** The error that keeps this transport from working, or null. */
  get error() {
    const m = this.process.methods.get(this.name);
    if (m && m.error) return m.error;
    if (this.process.error) return this.process.error;
    if (this.process.state === 'closing' || this.process.state === 'exited') {
      return makeError('the connector was closed', 'ERR_PTHOST_CLOSED', { transport: this.name });
    }
    if (this.process.state === 'ready' && !(m && m.address)) {
      return makeError(`pthost did not start transport ${this.name}`, 'ERR_PTHOST_METHOD', { transport: this.name });
    }
    return this.process.error;
  }

  /** Resolves when the transport is ready; rejects with its CMETHOD-ERROR or pthost's start-up error. */
  async ready() {
    await this.process.ready();
    const err = this.error;
    if (err) throw err;
    return { name: this.name, address: this.address, turn: this.turnAddress };
  }

  /**
   * The seed's createConnection(settings, options, connectListener) → net.Socket. `settings`
   * becomes the SOCKS5 JSON settings block; options.host/options.port the request's destination
   * (the PT server for a bound transport, the final destination for a free one; absent: the
   * unspecified destination 0.0.0.0:0). 'connect' is emitted after pthost's success reply.
   */
  createConnection(settings, options, connectListener) {
    if (typeof options === 'function') {
      connectListener = options;
      options = {};
    }
    options = options || {};
    const host = options.host === undefined || options.host === null || options.host === '' ? '0.0.0.0' : String(options.host);
    const port = options.port === undefined || options.port === null ? 0 : Number(options.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new RangeError(`options.port must be an integer 0..65535, not ${options.port}`);
    }
    const socket = new net.Socket({ allowHalfOpen: options.allowHalfOpen, signal: options.signal });
    if (typeof connectListener === 'function') socket.once('connect', connectListener);
    applySocketOptions(socket, options);
    this.process.track(socket);
    const start = () => {
      if (socket.destroyed) return;
      const err = this.error || (this.process.isDying() ? this.process.lostError() : null);
      if (err) {
        socket.destroy(err);
        return;
      }
      socksConnect(socket, this.address, settings, host, port, this.process);
    };
    if (this.process.state === 'starting') {
      // Until pthost is ready the socket counts as connecting, so net keeps writes pending.
      // net's connect() resets the writable side's "ending" (it re-initialises the socket), so
      // an end() made meanwhile is held here and made again after connect().
      socket.connecting = true;
      const ends = [];
      socket.end = function end(...args) {
        ends.push(args);
        return this;
      };
      const resume = () => {
        delete socket.end;
        socket.connecting = false;
      };
      this.process.ready().then(() => {
        resume();
        start();
        if (!socket.destroyed) for (const args of ends) socket.end(...args);
      }, (err) => {
        resume();
        if (!socket.destroyed) socket.destroy(err);
      });
    } else {
      start();
    }
    return socket;
  }

  /**
   * The seed's UDPConnector.createUDPSocket(options) → an object that behaves like
   * dgram.Socket, carried by RFC 5766 TURN to pthost's TURN listener for this transport.
   */
  createUDPSocket(options, callback) {
    const turn = this.process.turnCredentials;
    const sock = new TurnSocket(options, turn, () => this.ready().then((r) => {
      if (!r.turn) {
        throw makeError(`transport ${this.name} has no TURN listener (it carries no UDP, or the configuration's turn was disabled)`,
          'ERR_PTHOST_NO_TURN', { transport: this.name });
      }
      return r.turn;
    }));
    if (typeof callback === 'function') sock.on('message', callback);
    this.process.trackUdp(sock);
    return sock;
  }

  /** Latest statistics of this transport (at most 1 s old); with a callback, asked for now. */
  getStats(callback) {
    if (typeof callback === 'function') {
      this.process.requestStats((err, all) => callback(err, all && all[this.name]));
      return undefined;
    }
    const all = this.process.snapshot();
    return all[this.name] || { connections: 0, opened: 0, failed: 0, bytesIn: 0, bytesOut: 0 };
  }

  /** Stops the pthost process this connector shares with the other connectors of its call. */
  close(callback) {
    this.process.close(callback);
  }
}

/** Adds a TURN configuration with fresh credentials unless the application gave its own. */
function withTurn(configuration) {
  const cfg = { ...configuration };
  let credentials = null;
  if (cfg.turn === false) {
    delete cfg.turn;
  } else if (cfg.turn === undefined) {
    const password = crypto.randomBytes(16).toString('hex');
    cfg.turn = { realm: 'pthost-adapter', users: { adapter: password } };
    credentials = { realm: cfg.turn.realm, username: 'adapter', password };
  } else if (cfg.turn !== null && typeof cfg.turn === 'object' && cfg.turn.users && typeof cfg.turn.users === 'object') {
    const [username] = Object.keys(cfg.turn.users);
    if (username !== undefined) credentials = { realm: cfg.turn.realm, username, password: cfg.turn.users[username] };
  }
  return { cfg, credentials };
}

/**
 * The seed's createConnector(configuration, localStorage, signals) → [Connector].
 * `configuration` is a pthost client configuration (spec/ipc.md §3.2) without `role`;
 * `localStorage` is pthost's `state`; `signals` a Duplex (see Signals). The fourth argument,
 * the adapter's own, takes { executable, env, stderr }.
 */
function createConnector(configuration, localStorage, signals, adapterOptions) {
  const own = ownSignals(signals);
  const { cfg, credentials } = withTurn(configuration);
  const proc = new PtHostProcess('client', cfg, localStorage, own, adapterOptions);
  proc.turnCredentials = credentials;
  const connectors = proc.transports.map((name) => new Connector(proc, name));
  return Object.assign(connectors, {
    process: proc,
    signals: own,
    ready: () => proc.ready().then(() => connectors.map((c) => ({ name: c.name, address: c.address, turn: c.turnAddress, error: c.error }))),
    close: (callback) => proc.close(callback),
    getStats: (callback) => (typeof callback === 'function' ? proc.requestStats(callback) : proc.snapshot()),
  });
}

module.exports = { createConnector, Connector, transportIsBound };
