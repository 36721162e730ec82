/* SM3 (GB/T 32905-2016) in plain JavaScript, for checking audit proofs in the browser.
   sm3(Uint8Array) -> Uint8Array(32). No dependencies. */
(function (root) {
  "use strict";
  var IV = [0x7380166f, 0x4914b2b9, 0x172442d7, 0xda8a0600, 0xa96f30bc, 0x163138aa, 0xe38dee4d, 0xb0fb0e4e];
  function rotl(x, n) { n %= 32; return ((x << n) | (x >>> (32 - n))) >>> 0; }
  function p0(x) { return (x ^ rotl(x, 9) ^ rotl(x, 17)) >>> 0; }
  function p1(x) { return (x ^ rotl(x, 15) ^ rotl(x, 23)) >>> 0; }
  function sm3(msg) {
    var len = msg.length, bitLenHi = Math.floor(len / 0x20000000), bitLenLo = (len * 8) >>> 0;
    var padded = new Uint8Array((((len + 9 + 63) >> 6) << 6));
    padded.set(msg); padded[len] = 0x80;
    var n = padded.length;
    padded[n - 8] = bitLenHi >>> 24; padded[n - 7] = bitLenHi >>> 16; padded[n - 6] = bitLenHi >>> 8; padded[n - 5] = bitLenHi;
    padded[n - 4] = bitLenLo >>> 24; padded[n - 3] = bitLenLo >>> 16; padded[n - 2] = bitLenLo >>> 8; padded[n - 1] = bitLenLo;
    var v = IV.slice(), w = new Array(68), w1 = new Array(64);
    for (var off = 0; off < n; off += 64) {
      for (var i = 0; i < 16; i++) {
        var k = off + i * 4;
        w[i] = ((padded[k] << 24) | (padded[k + 1] << 16) | (padded[k + 2] << 8) | padded[k + 3]) >>> 0;
      }
      for (i = 16; i < 68; i++) {
        w[i] = (p1(w[i - 16] ^ w[i - 9] ^ rotl(w[i - 3], 15)) ^ rotl(w[i - 13], 7) ^ w[i - 6]) >>> 0;
      }
      for (i = 0; i < 64; i++) w1[i] = (w[i] ^ w[i + 4]) >>> 0;
      var a = v[0], b = v[1], c = v[2], d = v[3], e = v[4], f = v[5], g = v[6], h = v[7];
      for (var j = 0; j < 64; j++) {
        var t = j < 16 ? 0x79cc4519 : 0x7a879d8a;
        var ss1 = rotl((rotl(a, 12) + e + rotl(t, j)) >>> 0, 7);
        var ss2 = (ss1 ^ rotl(a, 12)) >>> 0;
        var ff = j < 16 ? (a ^ b ^ c) : ((a & b) | (a & c) | (b & c));
        var gg = j < 16 ? (e ^ f ^ g) : ((e & f) | (~e & g));
        var tt1 = (ff + d + ss2 + w1[j]) >>> 0;
        var tt2 = (gg + h + ss1 + w[j]) >>> 0;
        d = c; c = rotl(b, 9); b = a; a = tt1;
        h = g; g = rotl(f, 19); f = e; e = p0(tt2);
      }
      v[0] ^= a; v[1] ^= b; v[2] ^= c; v[3] ^= d; v[4] ^= e; v[5] ^= f; v[6] ^= g; v[7] ^= h;
      for (i = 0; i < 8; i++) v[i] >>>= 0;
    }
    var out = new Uint8Array(32);
    for (i = 0; i < 8; i++) { out[i * 4] = v[i] >>> 24; out[i * 4 + 1] = v[i] >>> 16; out[i * 4 + 2] = v[i] >>> 8; out[i * 4 + 3] = v[i]; }
    return out;
  }
  root.tongbanSm3 = sm3;
  if (typeof module !== "undefined") module.exports = sm3;
})(typeof window !== "undefined" ? window : globalThis);
