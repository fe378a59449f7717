'use strict';
// One pthost child process (spec/ipc.md §2): launched with the JSON configuration and
// `exit-on-stdin-close: true`, its stdout lines parsed (§4), message and STATUS lines written to
// its stdin (§4.10), its stderr kept for error messages (§4.11).

const { spawn } = require('node:child_process');
const { EventEmitter } = require('node:events');
const fs = require('node:fs');
const { parseLine } = require('./lines');
const { makeError, startupError, methodError, exitError, socketLostError } = require('./errors');

const os = require('node:os');
const path = require('node:path');

const STDERR_KEEP = 64 * 1024;
const START_LIMIT_MS = 30000; // spec/adapters.md §2.3: CMETHODS/SMETHODS DONE within 30 s
const STATS_LIMIT_MS = 5000; // spec/adapters.md §2.7: the answer to a STATUS request
const STATS_INTERVAL_MS = 1000; // getStats() is current to within one second (spec/adapters.md)
const KILL_AFTER_MS = 10000; // spec/ipc.md §9.2: allow at least 5 s between stdin close and SIGKILL

// Every live child, so that process exit ends them (stdin closing does it too, §9.1).
const live = new Set();
let exitHooked = false;
function trackLive(proc) {
  live.add(proc);
  if (!exitHooked) {
    exitHooked = true;
    process.on('exit', () => {
      for (const p of live) p._terminate();
    });
  }
}

function executablePath(options) {
  if (options && typeof options.executable === 'string' && options.executable !== '') return options.executable;
  if (process.env.PTHOST_EXE) return process.env.PTHOST_EXE;
  return 'pthost';
}

/** The configuration pthost receives: the application's, plus role, state and exit-on-stdin-close. */
function buildConfiguration(role, configuration, local) {
  if (configuration === null || typeof configuration !== 'object' || Array.isArray(configuration)) {
    throw new TypeError('configuration must be an object (a pthost configuration, spec/ipc.md §3)');
  }
  const cfg = { ...configuration };
  if (cfg.role !== undefined && cfg.role !== role) {
    throw new TypeError(`configuration.role is "${cfg.role}", but this call starts a ${role}`);
  }
  if (!Array.isArray(cfg.transports) || cfg.transports.length === 0 || !cfg.transports.every((t) => typeof t === 'string')) {
    throw new TypeError('configuration.transports must be a non-empty array of transport names');
  }
  if (cfg['exit-on-stdin-close'] === false) {
    throw new TypeError('exit-on-stdin-close must stay true: it is how the adapter ends pthost (spec/adapters.md §2.4)');
  }
  cfg.role = role;
  cfg['exit-on-stdin-close'] = true;
  if (local !== undefined && local !== null) {
    if (typeof local !== 'string' || local === '') throw new TypeError('local storage must be a directory path (pthost\'s "state")');
    cfg.state = local;
  }
  return cfg;
}

function closedError() {
  return makeError('closed before pthost was ready', 'ERR_PTHOST_CLOSED');
}

class PtHostProcess extends EventEmitter {
  /**
   * @param {'client'|'server'} role
   * @param {object} configuration pthost configuration (spec/ipc.md §3.2) without role
   * @param {string|null} local the state directory
   * @param {import('./signals').Signals} signals the adapter's own Signals
   * @param {object} options { executable, env, stderr: 'pipe'|'inherit', setsid }
   */
  constructor(role, configuration, local, signals, options) {
    super();
    this.role = role;
    this.configuration = buildConfiguration(role, configuration, local);
    // No local storage given: a private directory, removed after pthost exits (spec/adapters.md §2.3).
    this._tempState = null;
    if (this.configuration.state === undefined) {
      this._tempState = fs.mkdtempSync(path.join(os.tmpdir(), 'pthost-state-'));
      this.configuration.state = this._tempState;
    }
    this.transports = this.configuration.transports.slice();
    this.signals = signals;
    this.state = 'starting'; // starting → ready → closing → exited
    this.error = null; // start-up failure or unexpected exit
    this.exitCode = null;
    this.signalCode = null;
    /** name → { address, turn, args, error } */
    this.methods = new Map();
    this.stats = new Map();
    this.statsTime = 0;
    this.sockets = new Set();
    this.udpSockets = new Set();
    this._stderr = '';
    this._envError = null;
    this._readyWaiters = [];
    this._statsWaiters = [];
    this._closeCallbacks = [];
    this._pollTimer = null;
    this._killTimer = null;
    this._partial = '';

    const inherit = options && options.stderr === 'inherit';
    this.child = spawn(executablePath(options), [JSON.stringify(this.configuration)], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: (options && options.env) || process.env,
      windowsHide: true,
      // pthost stays in the application's session unless asked: a session of its own is also an
      // autogroup of its own for the Linux scheduler, which cost 15-30 % of the throughput under
      // CPU contention (spec/adapters.md §4.9).
      detached: options ? options.setsid === true : false,
    });
    this.pid = this.child.pid;
    trackLive(this);
    this._startTimer = setTimeout(() => {
      if (this.state !== 'starting') return;
      this._startTimedOut = true;
      this.child.kill('SIGKILL');
    }, START_LIMIT_MS);
    this._startTimer.unref();

    this.child.on('error', (err) => {
      // spawn failure (ENOENT, EACCES): there will be no 'close' with lines.
      if (this.state === 'starting') this._failStart(err);
    });
    this.child.stdin.on('error', () => {}); // EPIPE after the child ended: 'close' reports it
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (text) => this._onStdout(text));
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (text) => {
      this._stderr = (this._stderr + text).slice(-STDERR_KEEP);
      if (inherit) process.stderr.write(text);
      if (this.listenerCount('stderr') > 0) this.emit('stderr', text);
    });
    this.child.on('close', (code, signal) => this._onClose(code, signal));

    signals._attach((line) => this._deliverMessage(line));
  }

  get stderrText() {
    return this._stderr;
  }

  // --- stdout (spec/ipc.md §4) ---

  _onStdout(text) {
    const all = this._partial + text;
    const lines = all.split('\n');
    this._partial = lines.pop();
    for (const line of lines) this._onLine(line);
  }

  _onLine(line) {
    if (this.listenerCount('line') > 0) this.emit('line', line);
    const rec = parseLine(line);
    switch (rec.kind) {
      case 'env-error':
        this._envError = line;
        break;
      case 'method': {
        const m = this._method(rec.transport);
        if (rec.protocol === 'turn') m.turn = rec.address;
        else { m.address = rec.address; m.args = rec.args || {}; }
        break;
      }
      case 'method-error':
        this._method(rec.transport).error = methodError(rec.keyword, rec.transport, rec.message);
        break;
      case 'done':
        this._onDone();
        break;
      case 'status':
        this._onStatus(rec.transport, rec.stats);
        break;
      case 'message':
        // CMESSAGE from a client, SMESSAGE from a server (spec/ipc.md §4.8) go out on signals.
        if (rec.keyword === (this.role === 'client' ? 'CMESSAGE' : 'SMESSAGE')) this.signals._emitMessage(line);
        break;
      case 'log':
        if (this.listenerCount('log') > 0) this.emit('log', rec);
        break;
      default:
        break;
    }
  }

  _method(name) {
    let m = this.methods.get(name);
    if (!m) {
      m = { address: null, turn: null, args: {}, error: null };
      this.methods.set(name, m);
    }
    return m;
  }

  _onDone() {
    if (this.state !== 'starting') return;
    clearTimeout(this._startTimer);
    this.state = 'ready';
    this.startedTransports = this.transports.filter((t) => {
      const m = this.methods.get(t);
      return m && m.address && !m.error;
    });
    for (const t of this.startedTransports) this.stats.set(t, { connections: 0, opened: 0, failed: 0, bytesIn: 0, bytesOut: 0 });
    this.statsTime = Date.now();
    this._pollTimer = setInterval(() => this._requestStatus(), STATS_INTERVAL_MS);
    this._pollTimer.unref();
    const waiters = this._readyWaiters;
    this._readyWaiters = [];
    for (const w of waiters) w.resolve();
    this.emit('ready');
  }

  // --- statistics (spec/ipc.md §4.7 STATUS, §4.10 the STATUS request) ---

  _requestStatus() {
    if (this.state !== 'ready' || this.startedTransports.length === 0) return false;
    this.child.stdin.write('STATUS\n');
    return true;
  }

  _onStatus(transport, stats) {
    this.stats.set(transport, stats);
    this.statsTime = Date.now();
    const last = this.startedTransports && this.startedTransports[this.startedTransports.length - 1];
    if (transport === last && this._statsWaiters.length > 0) {
      const waiters = this._statsWaiters;
      this._statsWaiters = [];
      for (const w of waiters) w(null, this.snapshot());
    }
  }

  /** The latest statistics, name → { connections, opened, failed, bytesIn, bytesOut }. */
  snapshot() {
    const out = {};
    for (const [t, s] of this.stats) out[t] = { ...s };
    return out;
  }

  /** Asks pthost for STATUS now and calls back with the answer. */
  requestStats(callback) {
    if (this.state === 'starting') {
      this._readyWaiters.push({ resolve: () => this.requestStats(callback), reject: (e) => callback(e) });
      return;
    }
    if (this.state === 'exited' || this.state === 'closing') {
      process.nextTick(callback, this.error, this.snapshot());
      return;
    }
    if (this.startedTransports.length === 0) {
      process.nextTick(callback, null, {});
      return;
    }
    let answered = false;
    const timer = setTimeout(() => {
      if (answered) return;
      answered = true;
      this._statsWaiters = this._statsWaiters.filter((w) => w !== waiter);
      callback(makeError(`pthost did not answer a STATUS request within ${STATS_LIMIT_MS} ms`, 'ETIMEDOUT'), this.snapshot());
    }, STATS_LIMIT_MS);
    timer.unref();
    const waiter = (err, stats) => {
      if (answered) return;
      answered = true;
      clearTimeout(timer);
      callback(err, stats);
    };
    // Its own request every time: only lines read after it count as the answer (§2.7).
    this._statsWaiters.push(waiter);
    this._requestStatus();
  }

  // --- stdin (spec/ipc.md §4.10) ---

  /** A line from the other side: only SMESSAGE reaches a client, only CMESSAGE a server. */
  _deliverMessage(line) {
    const want = this.role === 'client' ? 'SMESSAGE ' : 'CMESSAGE ';
    if (!line.startsWith(want) || this.state === 'exited' || this.state === 'closing') return;
    this.child.stdin.write(line + '\n');
  }

  // --- readiness and ending ---

  /** Resolves when *METHODS DONE has been read; rejects with the start-up error. */
  ready() {
    if (this.state === 'starting') {
      return new Promise((resolve, reject) => this._readyWaiters.push({ resolve, reject }));
    }
    if (!this.startedTransports) return Promise.reject(this.error || closedError());
    return Promise.resolve();
  }

  _failStart(err) {
    if (this.state !== 'starting') return;
    clearTimeout(this._startTimer);
    if (this._tempState) fs.rm(this._tempState, { recursive: true, force: true }, () => {});
    this.state = 'exited';
    this.error = err;
    live.delete(this);
    this.signals._detach();
    const waiters = this._readyWaiters;
    this._readyWaiters = [];
    for (const w of waiters) w.reject(err);
    this._report(err);
    this.emit('exit', this.exitCode, this.signalCode);
  }

  _onClose(code, signal) {
    if (this._partial !== '') { this._onLine(this._partial); this._partial = ''; }
    clearTimeout(this._startTimer);
    if (this._tempState) fs.rm(this._tempState, { recursive: true, force: true }, () => {});
    this.exitCode = code;
    this.signalCode = signal;
    if (this._pollTimer) clearInterval(this._pollTimer);
    if (this._killTimer) clearTimeout(this._killTimer);
    live.delete(this);
    this.signals._detach();
    if (this.state === 'starting') {
      const err = this._startTimedOut
        ? makeError(`pthost did not finish starting within ${START_LIMIT_MS / 1000} s`, 'ETIMEDOUT', { stderr: this._stderr })
        : startupError(code, signal, this._stderr, this._envError);
      this._failStart(err);
      return;
    }
    const wasClosing = this.state === 'closing';
    this.state = 'exited';
    if (!wasClosing) {
      this.error = exitError(code, signal);
      const lost = socketLostError(this.error);
      for (const s of this.sockets) s.destroy(lost);
      for (const u of this.udpSockets) u._fail(lost);
      this._report(this.error);
    }
    this.sockets.clear();
    this.udpSockets.clear();
    const waiters = this._statsWaiters;
    this._statsWaiters = [];
    for (const w of waiters) w(this.error, this.snapshot());
    const callbacks = this._closeCallbacks;
    this._closeCallbacks = [];
    const closeErr = wasClosing && code !== 0 ? exitError(code, signal) : null;
    for (const cb of callbacks) cb(closeErr);
    this.emit('exit', code, signal);
  }

  /** 'error' only when someone listens: a dead child must not crash an application that did not ask. */
  _report(err) {
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }

  /**
   * True when pthost has ended or is ending (Linux: the process is a zombie or has PF_EXITING).
   * A socket that reads end of stream from a dying pthost reports an error instead.
   */
  isDying() {
    if (this.state === 'exited') return true;
    if (this.state === 'closing' || process.platform !== 'linux' || !this.pid) return false;
    let stat;
    try {
      stat = fs.readFileSync(`/proc/${this.pid}/stat`, 'latin1');
    } catch {
      return true;
    }
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const PF_EXITING = 0x4;
    return fields[0] === 'Z' || fields[0] === 'X' || (Number(fields[6]) & PF_EXITING) !== 0;
  }

  /** The error an application socket gets when pthost has died or is dying. */
  lostError() {
    const cause = this.error || makeError('pthost is exiting', 'ERR_PTHOST_EXIT', { pid: this.pid });
    return socketLostError(cause);
  }

  /** Stops pthost: stdin closes, pthost drains and exits (spec/ipc.md §9); SIGKILL after 10 s. */
  close(callback) {
    if (typeof callback === 'function') {
      if (this.state === 'exited') process.nextTick(callback, null);
      else this._closeCallbacks.push(callback);
    }
    if (this.state === 'exited' || this.state === 'closing') return;
    if (this.state === 'starting') {
      // Not ready yet: whatever it was doing is no longer wanted.
      const err = closedError();
      const waiters = this._readyWaiters;
      this._readyWaiters = [];
      for (const w of waiters) w.reject(err);
    }
    this.state = 'closing';
    if (this._pollTimer) clearInterval(this._pollTimer);
    this.child.stdin.end();
    this._killTimer = setTimeout(() => this.child.kill('SIGKILL'), KILL_AFTER_MS);
    this._killTimer.unref();
  }

  _terminate() {
    try {
      this.child.kill('SIGTERM');
    } catch {
      // already gone
    }
  }

  ref() {
    this.child.ref();
    for (const s of [this.child.stdin, this.child.stdout, this.child.stderr]) if (s && s.ref) s.ref();
    if (this._killTimer) this._killTimer.ref();
  }

  unref() {
    this.child.unref();
    for (const s of [this.child.stdin, this.child.stdout, this.child.stderr]) if (s && s.unref) s.unref();
  }

  /** Tracks a TURN socket likewise. */
  trackUdp(socket) {
    this.udpSockets.add(socket);
    socket.once('close', () => this.udpSockets.delete(socket));
  }

  /** Tracks an application socket so that pthost's death reaches it. */
  track(socket) {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
  }
}

module.exports = { PtHostProcess, executablePath, buildConfiguration };
