'use strict';
// Server side of the seed's JavaScript interface (PT 2.0 draft 1 §3.2.5.2): generateConfiguration,
// createServer (bound: the application's own net.Server is pthost's `target`) and createProxy
// (free: pthost connects to the destinations its `allow` list admits), each with a ServerManager.

const net = require('node:net');
const { execFileSync } = require('node:child_process');
const { EventEmitter } = require('node:events');
const { PtHostProcess, executablePath, buildConfiguration } = require('./process');
const { ownSignals } = require('./signals');
const { makeError } = require('./errors');

const ADAPTER_KEYS = ['executable', 'env', 'stderr', 'setsid', 'listen'];

/**
 * The seed's generateConfiguration(): runs `pthost generate-config T` (spec/ipc.md §2.3) and
 * returns { client, server }, each a configuration naming T with T's generated options, ready for
 * createConnector and createServer/createProxy. One package serves every transport, so the
 * transport's name is the first argument.
 */
function generateConfiguration(transport, adapterOptions) {
  if (typeof transport !== 'string' || transport === '') throw new TypeError('generateConfiguration(transport): a transport name is required');
  const args = ['generate-config', transport];
  if (adapterOptions && adapterOptions.plugindir) args.push('--plugindir', adapterOptions.plugindir);
  let out;
  try {
    out = execFileSync(executablePath(adapterOptions), args, {
      encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: (adapterOptions && adapterOptions.env) || process.env, windowsHide: true,
    });
  } catch (err) {
    if (err.status === undefined || err.status === null) throw err; // spawn failure (ENOENT ...)
    const stderr = String(err.stderr || '').trim();
    const first = stderr.split('\n').find((l) => l.startsWith('pthost: ')) || stderr || `pthost exited with status ${err.status}`;
    throw makeError(first, err.status === 64 ? 'ERR_PTHOST_USAGE' : 'ERR_PTHOST_EXIT', { exitCode: err.status, stderr });
  }
  const generated = JSON.parse(out);
  const wrap = (options) => ({ transports: [transport], options: { [transport]: options } });
  return { client: wrap(generated.client), server: wrap(generated.server) };
}

/** The seed's server interfaces are per transport (spec/adapters.md §2.1): one name. */
function checkOneTransport(configuration) {
  if (configuration && Array.isArray(configuration.transports) && configuration.transports.length !== 1) {
    throw new TypeError('a server runs exactly one transport: configuration.transports must have one name');
  }
}

function splitOptions(options) {
  const netOptions = {};
  const adapterOptions = {};
  for (const [k, v] of Object.entries(options || {})) {
    if (ADAPTER_KEYS.includes(k)) adapterOptions[k] = v;
    else netOptions[k] = v;
  }
  return { netOptions, adapterOptions };
}

function zeroStats() {
  return { connections: 0, opened: 0, failed: 0, bytesIn: 0, bytesOut: 0 };
}

/** The seed's ServerManager: close(callback) and getStats(), plus ready() and the SMETHOD line. */
class ServerManager extends EventEmitter {
  constructor(signals) {
    super();
    this.signals = signals;
    this.process = null;
    this._waiting = [];
    this._closed = false;
    this._closeCallbacks = [];
    this._startError = null;
  }

  _start(proc) {
    this.process = proc;
    proc.on('exit', (code, signal) => this.emit('exit', code, signal));
    proc.on('ready', () => this.emit('ready', this.method));
    proc.on('error', (err) => {
      if (this.listenerCount('error') > 0) this.emit('error', err);
    });
    const waiting = this._waiting;
    this._waiting = [];
    for (const w of waiting) w();
  }

  _whenStarted(fn) {
    if (this.process) fn();
    else this._waiting.push(fn);
  }

  /** The SMETHOD line: { name, address: { host, port }, args }, or null before it (or after SMETHOD-ERROR). */
  get method() {
    if (!this.process) return null;
    const name = this.process.transports[0];
    const m = this.process.methods.get(name);
    if (!m || !m.address || m.error) return null;
    return { name, address: { ...m.address }, args: { ...m.args } };
  }

  /** The transport's SMETHOD-ERROR, pthost's start-up error, or null. */
  get error() {
    if (this._startError) return this._startError;
    if (!this.process) return null;
    const m = this.process.methods.get(this.process.transports[0]);
    return (m && m.error) || this.process.error;
  }

  /** Resolves with `method` once SMETHODS DONE was read; rejects with SMETHOD-ERROR or the start-up error. */
  ready() {
    if (this._startError) return Promise.reject(this._startError);
    return new Promise((resolve, reject) => {
      this._whenStarted(() => this.process.ready().then(() => {
        const m = this.method;
        if (m) resolve(m);
        else reject(this.error || makeError('pthost did not start the transport', 'ERR_PTHOST_METHOD'));
      }, reject));
    });
  }

  /**
   * The transport's statistics { connections, opened, failed, bytesIn, bytesOut }: without a
   * callback the latest (at most 1 s old), with one asked for now (STATUS on stdin, §2.7).
   */
  getStats(callback) {
    const pick = (all) => (all && this.process && all[this.process.transports[0]]) || zeroStats();
    if (typeof callback === 'function') {
      this._whenStarted(() => this.process.requestStats((err, all) => callback(err, pick(all))));
      return undefined;
    }
    return pick(this.process && this.process.snapshot());
  }

  /** Stops pthost (stdin closes, sessions drain, spec/ipc.md §9) and then the application's server. */
  close(callback) {
    if (typeof callback === 'function') this._closeCallbacks.push(callback);
    if (this._closed) return this;
    this._closed = true;
    const finish = (err) => {
      const cbs = this._closeCallbacks;
      this._closeCallbacks = [];
      for (const cb of cbs) cb(err);
    };
    if (!this.process) {
      this._closeApplicationServer(() => finish(null));
      return this;
    }
    this.process.close((err) => this._closeApplicationServer(() => finish(err)));
    return this;
  }

  _closeApplicationServer(done) {
    done();
  }
}

/**
 * The seed's createServer(configuration, local, signals, options, connectionListener): a
 * net.Server that is also a ServerManager. The server listens on options.listen (default
 * 127.0.0.1, a free port) and is pthost's `target`, so every session of a client reaches
 * connectionListener.
 */
function createServer(configuration, local, signals, options, connectionListener) {
  if (typeof options === 'function') {
    connectionListener = options;
    options = {};
  }
  if (configuration && (configuration.target !== undefined || configuration.allow !== undefined)) {
    throw new TypeError('createServer sets pthost\'s target itself; use createProxy for a free server with allow');
  }
  checkOneTransport(configuration);
  const { netOptions, adapterOptions } = splitOptions(options);
  buildConfiguration('server', { ...configuration, target: '127.0.0.1:1' }, local); // TypeErrors now, not later
  const own = ownSignals(signals);
  const server = net.createServer(netOptions, connectionListener);
  const manager = new ServerManager(own);
  const netClose = server.close;
  manager._closeApplicationServer = (done) => {
    if (server.listening) netClose.call(server, () => done());
    else done();
  };
  server.on('listening', () => {
    if (manager._closed || manager.process) return;
    const a = server.address();
    const target = a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
    try {
      manager._start(new PtHostProcess('server', { ...configuration, target }, local, own, adapterOptions));
    } catch (err) {
      manager._startError = err;
      netClose.call(server);
      process.nextTick(() => server.emit('error', err));
    }
  });
  server.listen(adapterOptions.listen || { host: '127.0.0.1', port: 0 });

  // net.Server + ServerManager (the seed's "net.Server + ServerManager").
  Object.defineProperty(server, 'process', { get: () => manager.process });
  Object.defineProperty(server, 'method', { get: () => manager.method });
  Object.defineProperty(server, 'error', { get: () => manager.error, configurable: true });
  server.signals = own;
  server.manager = manager;
  server.ready = () => manager.ready();
  server.getStats = (callback) => manager.getStats(callback);
  server.close = (callback) => {
    manager.close(callback);
    return server;
  };
  return server;
}

/**
 * The seed's createProxy(configuration, local, signals, options, connectionListener) →
 * ServerManager: a free server; `configuration.allow` says where pthost may connect
 * (spec/ipc.md §3.4). Sessions go to their destinations, not to the application, so
 * connectionListener is never called (it is accepted for the seed's signature).
 */
function createProxy(configuration, local, signals, options, connectionListener) { // eslint-disable-line no-unused-vars
  if (typeof options === 'function') options = {};
  if (configuration && configuration.target !== undefined) {
    throw new TypeError('createProxy makes a free server: remove target (or use createServer)');
  }
  checkOneTransport(configuration);
  const { adapterOptions } = splitOptions(options);
  const own = ownSignals(signals);
  const manager = new ServerManager(own);
  manager._start(new PtHostProcess('server', configuration, local, own, adapterOptions));
  return manager;
}

module.exports = { generateConfiguration, createServer, createProxy, ServerManager };
