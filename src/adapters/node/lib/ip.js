'use strict';
// IPv6 text ↔ bytes, for SOCKS5 requests (spec/ipc.md §5.5) and STUN addresses (RFC 5389 §15.2).

/** The 16 bytes of an IPv6 literal (a zone index is dropped; an embedded IPv4 tail is allowed). */
function ipv6Bytes(host) {
  let h = host.replace(/%.*$/, '');
  const v4 = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(h);
  if (v4) {
    const o = v4[2].split('.').map(Number);
    h = `${v4[1]}${((o[0] << 8) | o[1]).toString(16)}:${((o[2] << 8) | o[3]).toString(16)}`;
  }
  const part = (t) => (t === '' ? [] : t.split(':').map((x) => parseInt(x, 16)));
  const halves = h.split('::');
  let words;
  if (halves.length === 1) words = part(halves[0]);
  else {
    const a = part(halves[0]);
    const b = part(halves[1]);
    words = [...a, ...new Array(8 - a.length - b.length).fill(0), ...b];
  }
  const bytes = Buffer.alloc(16);
  words.forEach((w, i) => bytes.writeUInt16BE(w, 2 * i));
  return bytes;
}

/** RFC 5952 text of 16 bytes: lower case, the longest run of two or more zero words as `::`. */
function formatIPv6(bytes) {
  const words = [];
  for (let i = 0; i < 16; i += 2) words.push(bytes.readUInt16BE(i));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (words[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = words.map((w) => w.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

module.exports = { ipv6Bytes, formatIPv6 };
