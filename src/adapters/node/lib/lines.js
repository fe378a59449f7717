'use strict';
// Parsing of pthost's stdout lines (spec/ipc.md §4). Pure functions, no I/O.

/** Splits "host:port" / "[v6]:port" into { host, port }. */
function parseAddress(text) {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) || /^([^:]+):(\d+)$/.exec(text);
  if (!m) return null;
  return { host: m[1], port: Number(m[2]) };
}

/** SMETHOD ARGS: k=v,k=v with `\` escaping `\`, `=` and `,` (spec/ipc.md §4.5). */
function parseArgs(text) {
  const args = {};
  let key = '';
  let value = '';
  let inValue = false;
  for (let i = 0; i < text.length; i++) {
    let c = text[i];
    if (c === '\\' && i + 1 < text.length) {
      c = text[++i];
    } else if (c === '=' && !inValue) {
      inValue = true;
      continue;
    } else if (c === ',') {
      if (key !== '') args[key] = value;
      key = ''; value = ''; inValue = false;
      continue;
    }
    if (inValue) value += c; else key += c;
  }
  if (key !== '') args[key] = value;
  return args;
}

/** STATUS TRANSPORT=t CONNECTIONS=n ... (spec/ipc.md §4.7) → { transport, stats }. */
function parseStatus(rest) {
  const fields = {};
  for (const part of rest.split(' ')) {
    const eq = part.indexOf('=');
    if (eq > 0) fields[part.slice(0, eq)] = part.slice(eq + 1);
  }
  if (!fields.TRANSPORT) return null;
  const n = (k) => (fields[k] === undefined ? 0 : Number(fields[k]));
  return {
    transport: fields.TRANSPORT,
    stats: {
      connections: n('CONNECTIONS'),
      opened: n('OPENED'),
      failed: n('FAILED'),
      bytesIn: n('BYTES-IN'),
      bytesOut: n('BYTES-OUT'),
    },
  };
}

/** LOG SEVERITY=s MESSAGE="text" (spec/ipc.md §4.6). */
function parseLog(rest) {
  const m = /^SEVERITY=(\S+) MESSAGE="(.*)"$/.exec(rest);
  if (!m) return { severity: 'info', message: rest };
  const message = m[2].replace(/\\(.)/g, (_, c) => ({ n: '\n', r: '\r', t: '\t' })[c] ?? c);
  return { severity: m[1], message };
}

/**
 * One stdout line → a record { kind, ... }. Unknown keywords give { kind: 'unknown' }
 * (spec/ipc.md §4.1: the parent SHOULD ignore them).
 */
function parseLine(line) {
  const sp = line.indexOf(' ');
  const keyword = sp < 0 ? line : line.slice(0, sp);
  const rest = sp < 0 ? '' : line.slice(sp + 1);
  const word = (s) => {
    const i = s.indexOf(' ');
    return i < 0 ? [s, ''] : [s.slice(0, i), s.slice(i + 1)];
  };
  switch (keyword) {
    case 'VERSION':
      return { kind: 'version', version: rest };
    case 'VERSION-ERROR':
    case 'ENV-ERROR':
    case 'PROXY-ERROR':
      return { kind: 'env-error', keyword, message: rest };
    case 'CMETHOD':
    case 'SMETHOD': {
      const [transport, tail] = word(rest);
      if (keyword === 'CMETHOD') {
        const [protocol, addr] = word(tail);
        return { kind: 'method', role: 'client', transport, protocol, address: parseAddress(addr), text: addr };
      }
      const [addr, argsPart] = word(tail);
      const args = argsPart.startsWith('ARGS:') ? parseArgs(argsPart.slice(5)) : {};
      return { kind: 'method', role: 'server', transport, protocol: 'tcp', address: parseAddress(addr), text: addr, args };
    }
    case 'CMETHOD-ERROR':
    case 'SMETHOD-ERROR': {
      const [transport, message] = word(rest);
      return { kind: 'method-error', keyword, transport, message };
    }
    case 'CMETHODS':
    case 'SMETHODS':
      return rest === 'DONE' ? { kind: 'done' } : { kind: 'unknown', line };
    case 'STATUS': {
      const s = parseStatus(rest);
      return s ? { kind: 'status', ...s } : { kind: 'unknown', line };
    }
    case 'CMESSAGE':
    case 'SMESSAGE': {
      const [transport] = word(rest);
      return { kind: 'message', keyword, transport, line };
    }
    case 'LOG':
      return { kind: 'log', ...parseLog(rest) };
    default:
      return { kind: 'unknown', line };
  }
}

module.exports = { parseLine, parseAddress, parseArgs, parseStatus };
