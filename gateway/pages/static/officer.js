/* The officer page's one script: inclusion proofs checked in the browser.
   Leaf SM3(0x00 || entry), node SM3(0x01 || left || right), RFC 9162 section 2.1.3.2. */
(function () {
  "use strict";
  var sm3 = window.tongbanSm3;
  function hex(bytes) { return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join(""); }
  function unhex(s) { var out = new Uint8Array(s.length / 2); for (var i = 0; i < out.length; i++) out[i] = parseInt(s.substr(i * 2, 2), 16); return out; }
  function unb64(s) { var bin = atob(s), out = new Uint8Array(bin.length); for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i); return out; }
  function cat(a, b, c) { var out = new Uint8Array(a.length + b.length + (c ? c.length : 0)); out.set(a); out.set(b, a.length); if (c) out.set(c, a.length + b.length); return out; }
  function node(l, r) { return sm3(cat(new Uint8Array([1]), l, r)); }
  function rootFromInclusion(index, size, leaf, path) {
    if (index >= size) throw new Error("index beyond tree");
    var fn = index, sn = size - 1, r = leaf;
    for (var i = 0; i < path.length; i++) {
      if (sn === 0) throw new Error("proof too long");
      var p = path[i];
      if ((fn & 1) || fn === sn) {
        r = node(p, r);
        if (!(fn & 1)) { while (fn !== 0 && !(fn & 1)) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); } }
      } else {
        r = node(r, p);
      }
      fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("proof too short");
    return r;
  }
  function checkpointRoot(text) {
    var lines = text.split("\n");
    return { size: parseInt(lines[1], 10), root: unb64(lines[2]) };
  }
  function verify(index, out) {
    out.textContent = "…"; out.className = "proof-result";
    fetch("/officer/api/proof/" + index, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (p) {
        if (p.status !== "ready") { out.textContent = "⧗ " + p.detail + " 尚未纳入检查点"; return; }
        var leaf = sm3(cat(new Uint8Array([0]), unb64(p.entry_b64)));
        if (hex(leaf) !== p.leaf_hash) throw new Error("entry bytes do not hash to the leaf");
        var cp = checkpointRoot(p.checkpoint);
        if (cp.size !== p.tree_size) throw new Error("proof is for another tree size");
        var root = rootFromInclusion(index, p.tree_size, leaf, p.audit_path.map(unhex));
        if (hex(root) !== hex(cp.root)) throw new Error("root does not match the checkpoint");
        out.textContent = "✓ included in checkpoint " + cp.size + " (SM3, checked in browser) 已验证";
        out.className = "proof-result ok";
        out.dataset.verified = "true";
      })
      .catch(function (e) {
        out.textContent = "✗ " + e.message + " 验证失败";
        out.className = "proof-result bad";
        out.dataset.verified = "false";
      });
  }
  document.addEventListener("click", function (ev) {
    var t = ev.target;
    if (t && t.classList && t.classList.contains("proof")) {
      var index = parseInt(t.getAttribute("data-index"), 10);
      verify(index, document.getElementById("proof-" + index));
    }
  });
  window.tongbanProof = { rootFromInclusion: rootFromInclusion, sm3: sm3 };
})();
