'use strict';
// pthost: the Pluggable Transports 2.0 JavaScript interface (PT 2.0 draft 1 §3.2.5) over a pthost
// child process (spec/ipc.md). spec/adapters.md, JavaScript section, maps every call onto the IPC.

const { createConnector, Connector, transportIsBound } = require('./lib/connector');
const { generateConfiguration, createServer, createProxy, ServerManager } = require('./lib/server');
const { Signals } = require('./lib/signals');
const { TurnSocket } = require('./lib/turn');
const { REPLY_CODES } = require('./lib/errors');

/** A Signals stream to hand to createConnector/createServer/createProxy; link two with a.pipe(b); b.pipe(a). */
function createSignals() {
  return new Signals();
}

/** SOCKS5 reply code → the `code` of the 'error' a socket emits (spec/adapters.md). */
const socksReplyCodes = Object.freeze(Object.fromEntries([...REPLY_CODES].map(([rep, [code]]) => [rep, code])));

module.exports = {
  createConnector,
  generateConfiguration,
  createServer,
  createProxy,
  createSignals,
  Signals,
  Connector,
  ServerManager,
  TurnSocket,
  transportIsBound,
  socksReplyCodes,
};
