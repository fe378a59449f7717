'use strict';
// Errors the adapter reports (spec/adapters.md, JavaScript section "Errors").

/** An Error with Node's usual `code` and any extra fields. */
function makeError(message, code, fields) {
  const err = new Error(message);
  err.code = code;
  if (fields) Object.assign(err, fields);
  return err;
}

/** pthost exited during start-up (exit 78 configuration, 73 state, 64 usage, 69 nothing started, 70). */
function startupError(exitCode, signal, stderrText, envError) {
  const lines = stderrText.split('\n').filter((l) => l.startsWith('pthost: '));
  const message = lines.length > 0 ? lines.join('; ') : envError || `pthost exited with ${signal || `status ${exitCode}`} before it was ready`;
  const key = /config key '([^']*)'/.exec(message);
  const code = exitCode === 78 ? 'ERR_PTHOST_CONFIG' : exitCode === 73 ? 'ERR_PTHOST_STATE' : 'ERR_PTHOST_EXIT';
  return makeError(message, code, { exitCode, signal, key: key ? key[1] : undefined, stderr: stderrText });
}

/** A CMETHOD-ERROR or SMETHOD-ERROR line (spec/ipc.md §4.4, §4.5). */
function methodError(keyword, transport, reason) {
  return makeError(`${keyword} ${transport}: ${reason}`, 'ERR_PTHOST_METHOD', { transport, reason });
}

/** pthost went away while the adapter still used it. */
function exitError(exitCode, signal) {
  const how = signal ? `was killed by ${signal}` : `exited with status ${exitCode}`;
  return makeError(`pthost ${how}`, 'ERR_PTHOST_EXIT', { exitCode, signal });
}

/** What an open socket gets when its pthost died (spec/adapters.md: "every open socket errors"). */
function socketLostError(cause) {
  return makeError(`connection lost: ${cause.message}`, 'ECONNRESET', { cause, syscall: 'read' });
}

// SOCKS5 reply codes (spec/ipc.md §5.6) → Node error codes. The mapping is the adapter's
// choice; spec/adapters.md lists it.
const REPLY_CODES = new Map([
  [0x01, ['ECONNABORTED', 'general failure']],
  [0x02, ['EACCES', 'not allowed by ruleset']],
  [0x03, ['ENETUNREACH', 'network unreachable']],
  [0x04, ['EHOSTUNREACH', 'host unreachable']],
  [0x05, ['ECONNREFUSED', 'connection refused']],
  [0x06, ['ETIMEDOUT', 'TTL expired (timed out)']],
  [0x07, ['EOPNOTSUPP', 'command not supported']],
  [0x08, ['EAFNOSUPPORT', 'address type not supported']],
  [0x10, ['EMSGSIZE', 'settings too large']],
  [0x11, ['ETIMEDOUT', 'settings timeout']],
  [0x12, ['EINVAL', 'settings not parseable']],
  [0x13, ['EINVAL', 'settings invalid']],
]);

function replyError(rep, host, port) {
  const [code, text] = REPLY_CODES.get(rep) || ['ECONNABORTED', 'unknown reply code'];
  const hex = rep.toString(16).padStart(2, '0');
  return makeError(`SOCKS5 reply ${hex} (${text}) for ${host}:${port}`, code, {
    syscall: 'connect', address: host, port, socksReply: rep,
  });
}

function protocolError(message, host, port) {
  return makeError(message, 'EPROTO', { syscall: 'connect', address: host, port });
}

module.exports = { makeError, startupError, methodError, exitError, socketLostError, replyError, protocolError, REPLY_CODES };
