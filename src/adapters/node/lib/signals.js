'use strict';
// The seed's `signals` stream (PT 2.0 draft 1 §3.2.5): a Duplex of messages. Its readable side
// gives the CMESSAGE/SMESSAGE lines pthost wrote (spec/ipc.md §4.8), one line (with its LF) per
// chunk; its writable side takes lines from the other side, as bytes or strings, split at LF.
// Linking two adapters: `a.pipe(b); b.pipe(a)`.

const { Duplex } = require('node:stream');

const MAX_LINE = 65536; // spec/ipc.md §4.10: pthost discards longer stdin lines
const MAX_UNREAD = 4096; // spec/adapters.md §2.5: unread output lines kept, the oldest dropped

class Signals extends Duplex {
  constructor(options) {
    super({ ...options, readableObjectMode: true, writableObjectMode: false, decodeStrings: true });
    this._partial = '';
    this._skipping = false;
    this._sink = null; // (line) => void, set by the pthost process this stream belongs to
    this._pending = []; // lines written before a process attached
    this._ended = false; // the process exited: lines for it are dropped (spec/ipc.md §6.6)
    this._unread = []; // output lines waiting for a reader
    this._wanted = false;
  }

  /** Called by the adapter: a message pthost wrote. */
  _emitMessage(line) {
    this._unread.push(line + '\n');
    if (this._unread.length > MAX_UNREAD) this._unread.shift();
    if (this._wanted) this._flush();
  }

  _flush() {
    while (this._unread.length > 0) {
      if (!this.push(this._unread.shift())) {
        this._wanted = false;
        return;
      }
    }
  }

  _attach(sink) {
    if (this._sink) throw new Error('these signals already belong to a pthost process');
    this._sink = sink;
    const pending = this._pending;
    this._pending = [];
    for (const line of pending) sink(line);
  }

  _detach() {
    this._sink = null;
    this._ended = true;
  }

  _read() {
    this._wanted = true;
    this._flush();
  }

  _write(chunk, encoding, callback) {
    let text = this._partial + chunk.toString('utf8');
    let nl;
    while ((nl = text.indexOf('\n')) >= 0) {
      const line = text.slice(0, nl).replace(/\r$/, '');
      text = text.slice(nl + 1);
      if (this._skipping) { this._skipping = false; continue; }
      if (line !== '') this._deliver(line);
    }
    if (text.length > MAX_LINE) { this._skipping = true; text = ''; }
    this._partial = text;
    callback();
  }

  _final(callback) {
    if (this._partial !== '' && !this._skipping) this._deliver(this._partial.replace(/\r$/, ''));
    this._partial = '';
    callback();
  }

  _deliver(line) {
    if (this._sink) this._sink(line);
    else if (!this._ended && this._pending.length < MAX_UNREAD) this._pending.push(line);
  }
}

/**
 * The adapter's own Signals for a `signals` argument: undefined/null → a new Signals; a Signals →
 * itself; any other Duplex → a new Signals linked to it both ways (outgoing lines are written to
 * it, lines read from it are delivered).
 */
function ownSignals(signals) {
  if (signals === undefined || signals === null) return new Signals();
  if (signals instanceof Signals) return signals;
  if (typeof signals.write !== 'function' || typeof signals.on !== 'function') {
    throw new TypeError('signals must be a Duplex stream (or null)');
  }
  const own = new Signals();
  own.pipe(signals, { end: false });
  signals.pipe(own, { end: false });
  return own;
}

module.exports = { Signals, ownSignals };
