/* The officer page's script, checking in the browser what the server says it checked,
   with sm-crypto (vendored from npm: sm3.js and sm2.js beside this file, see
   gateway/static/README.md):
   - the latest checkpoint's gateway signature: a C2SP signed note whose body (origin, size
     and root lines) is signed SM3withSM2 (GM/T 0009, user id 1234567812345678), the
     signature line "— <name> base64(4-byte key id || r || s)", against the gateway's SM2
     key from /.well-known/jwks.json (the key id, SHA-256 of name || 0x0A || 0xFF ||
     "tongban/SM3withSM2" || 04 || x || y, first 4 bytes, picks it);
   - inclusion proofs: leaf SM3(0x00 || entry), node SM3(0x01 || left || right), RFC 9162
     section 2.1.3.2, against the root of a checkpoint whose gateway signature verifies.
   The key is pinned in this browser (localStorage, per gateway name) the first time a
   signature verifies: a checkpoint signed by any other key is NOT verified, even when the
   JWK Set served with it holds that key (a gateway, or whoever serves its pages, swapping
   both), until the officer pins the new key by hand after comparing its id with the one
   the operator announces (a rotation). */
(function () {
  "use strict";
  var USER_ID = "1234567812345678";
  var DASH = "\u2014";
  var C2SP_TYPE = [0xff].concat(Array.prototype.map.call("tongban/SM3withSM2", function (c) { return c.charCodeAt(0); }));

  function hex(bytes) { return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join(""); }
  function unhex(s) { var out = new Uint8Array(s.length / 2); for (var i = 0; i < out.length; i++) out[i] = parseInt(s.substr(i * 2, 2), 16); return out; }
  function unb64(s) { var bin = atob(s), out = new Uint8Array(bin.length); for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i); return out; }
  function unb64url(s) { s = s.replace(/-/g, "+").replace(/_/g, "/"); while (s.length % 4) s += "="; return unb64(s); }
  function b64url(bytes) { return btoa(String.fromCharCode.apply(null, bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, ""); }
  function utf8(text) { return new TextEncoder().encode(text); }
  function cat() {
    var parts = Array.prototype.slice.call(arguments), n = 0, at = 0;
    parts.forEach(function (p) { n += p.length; });
    var out = new Uint8Array(n);
    parts.forEach(function (p) { out.set(p, at); at += p.length; });
    return out;
  }
  // sm-crypto's sm3 takes bytes (an array) and answers hex.
  function sm3(bytes) { return unhex(window.sm3(Array.prototype.slice.call(bytes))); }
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

  // --- the signed note ----------------------------------------------------------------

  function parseNote(text) {
    var at = text.indexOf("\n\n");
    if (at < 0) throw new Error("not a signed note");
    var body = text.slice(0, at + 1), lines = body.split("\n");
    if (lines.length !== 4 || !lines[0] || !/^(0|[1-9][0-9]*)$/.test(lines[1])) throw new Error("not a checkpoint body");
    var root = unb64(lines[2]);
    if (root.length !== 32) throw new Error("checkpoint root must be 32 bytes");
    var signatures = [];
    text.slice(at + 2).split("\n").forEach(function (line) {
      if (!line) return;
      var parts = line.split(" ");
      if (parts.length !== 3 || parts[0] !== DASH) throw new Error("signature lines are '— name base64'");
      var blob = unb64(parts[2]);
      if (blob.length !== 68) throw new Error("an SM2 note signature is a 4-byte key id and 64 bytes");
      signatures.push({ name: parts[1], keyId: hex(blob.subarray(0, 4)), rs: hex(blob.subarray(4)) });
    });
    return { body: body, size: parseInt(lines[1], 10), root: root, signatures: signatures };
  }

  var keys = null;
  // The gateway's SM2 keys, each with its key id (tongban's SM3 JWK thumbprint, computed
  // here from x and y rather than taken from the set's "kid").
  function gatewayKeys() {
    if (keys === null) {
      keys = fetch("/.well-known/jwks.json", { credentials: "omit", headers: { Accept: "application/json" } })
        .then(function (r) { if (!r.ok) throw new Error("JWK Set: HTTP " + r.status); return r.json(); })
        .then(function (set) {
          return (set.keys || []).filter(function (k) {
            return k.kty === "EC" && k.crv === "SM2" && !("d" in k) && typeof k.x === "string" && typeof k.y === "string";
          }).map(function (k) {
            var x = unb64url(k.x), y = unb64url(k.y);
            if (x.length !== 32 || y.length !== 32) throw new Error("JWK Set: an SM2 key that is not 32-byte x and y");
            var canonical = '{"crv":"SM2","kty":"EC","x":"' + k.x + '","y":"' + k.y + '"}';
            return { point: cat(new Uint8Array([4]), x, y), id: b64url(sm3(utf8(canonical))).slice(0, 16) };
          });
        });
    }
    return keys;
  }

  function c2spKeyId(name, point) {
    if (!(window.crypto && window.crypto.subtle)) return Promise.resolve(null); // not a secure context
    var preimage = cat(utf8(name), new Uint8Array([0x0a]), new Uint8Array(C2SP_TYPE), point);
    return window.crypto.subtle.digest("SHA-256", preimage).then(function (d) { return hex(new Uint8Array(d).subarray(0, 4)); });
  }

  // --- the pinned keys: {"<gateway name>": {"<key id>": "<pinned at, ISO>"}} --------------
  var PINS = "tongban.pinned-gateway-keys";
  function pins() {
    try { var all = JSON.parse(window.localStorage.getItem(PINS) || "{}"); return all && typeof all === "object" ? all : {}; }
    catch (e) { return {}; }
  }
  function pinned(name) { var mine = pins()[name]; return mine && typeof mine === "object" ? mine : {}; }
  function pin(name, key) {
    var all = pins(), mine = pinned(name);
    mine[key] = new Date().toISOString();
    all[name] = mine;
    window.localStorage.setItem(PINS, JSON.stringify(all));
  }

  // A verified signature's key against the keys pinned for the gateway: the first key seen
  // is pinned now; another is refused (with the key, so the page can offer to pin it).
  function againstPins(result, name) {
    if (!result.ok) return result;
    var mine = pinned(name), ids = Object.keys(mine);
    if (!ids.length) { pin(name, result.key); return { ok: true, key: result.key, pinnedNow: true }; }
    if (mine[result.key]) return { ok: true, key: result.key, pinnedAt: mine[result.key] };
    return { ok: false, unpinned: result.key, reason: "it was signed by key " + result.key +
      ", not by the key pinned in this browser (" + ids.join(", ") + ")" };
  }

  // Resolves to {ok: true, key: <key id>} or {ok: false, reason}; never rejects. The key
  // must be pinned (or is pinned now, if none is).
  function verifyNote(note, gatewayName) {
    return verifySignature(note, gatewayName).then(function (r) { return againstPins(r, gatewayName); });
  }

  function verifySignature(note, gatewayName) {
    var lines = note.signatures.filter(function (s) { return s.name === gatewayName; });
    if (!gatewayName || !lines.length) return Promise.resolve({ ok: false, reason: "no signature line by the gateway " + (gatewayName || "") });
    return gatewayKeys().then(function (candidates) {
      if (!candidates.length) return { ok: false, reason: "the gateway's JWK Set has no SM2 key" };
      return Promise.all(candidates.map(function (k) { return c2spKeyId(gatewayName, k.point); })).then(function (ids) {
        var message = Array.prototype.slice.call(utf8(note.body)), matched = false;
        for (var i = 0; i < lines.length; i++) {
          for (var j = 0; j < candidates.length; j++) {
            if (ids[j] !== null && ids[j] !== lines[i].keyId) continue;
            matched = true;
            if (window.sm2.doVerifySignature(message, lines[i].rs, hex(candidates[j].point), { der: false, hash: true, userId: USER_ID })) {
              return { ok: true, key: candidates[j].id };
            }
          }
        }
        return { ok: false, reason: matched ? "the SM2 signature does not verify over this checkpoint" : "no key of the gateway's JWK Set has the signature's key id" };
      });
    }).catch(function (e) { return { ok: false, reason: e.message }; });
  }

  function gatewayName() {
    var li = document.querySelector('ul.signers li[data-role="gateway"]');
    return li ? li.getAttribute("data-name") : null;
  }

  function showSignature() {
    var out = document.getElementById("cp-signature"), text = document.getElementById("cp-note");
    if (!out || !text) return;
    function done(result) {
      out.dataset.verified = result.ok ? "true" : "false";
      out.className = "cp-signature " + (result.ok ? "ok" : "bad");
      out.textContent = "";
      if (result.ok) {
        out.dataset.pinned = result.pinnedNow ? "now" : "before";
        out.append("✓ Gateway signature verified in your browser (SM2 with SM3, sm-crypto) against the gateway key ");
        var code = document.createElement("code"); code.textContent = result.key; out.append(code);
        out.append(result.pinnedNow
          ? ", seen for the first time and pinned in this browser now: compare its id with the one your operator publishes. "
          : ", pinned in this browser since " + result.pinnedAt.slice(0, 10) + ". ");
        out.append("网关签名已在浏览器中验证");
      } else {
        out.append("✗ Gateway signature NOT verified in your browser: " + result.reason + ". 网关签名未通过浏览器验证");
        if (result.unpinned) {
          // A rotation: the officer compares the new key id with the operator's announcement.
          var button = document.createElement("button");
          button.type = "button"; button.id = "cp-pin";
          button.textContent = "Pin key " + result.unpinned + " (only if your operator announced it) 信任此新密钥";
          button.addEventListener("click", function () { pin(gatewayName(), result.unpinned); showSignature(); });
          out.append(" "); out.append(button);
        }
      }
    }
    var note, size = document.getElementById("cp-size"), root = document.getElementById("cp-root");
    try {
      note = parseNote(text.textContent);
      // What the page shows must be what was signed.
      if (!size || !root || parseInt(size.textContent, 10) !== note.size || hex(unb64(root.textContent.trim())) !== hex(note.root)) {
        throw new Error("the size or root shown is not the signed checkpoint's");
      }
    } catch (e) {
      done({ ok: false, reason: e.message });
      return;
    }
    verifyNote(note, gatewayName()).then(done);
  }

  // --- inclusion proofs ---------------------------------------------------------------

  function verify(index, out) {
    out.textContent = "…"; out.className = "proof-result";
    fetch("/officer/api/proof/" + index, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (p) {
        if (p.status !== "ready") { out.textContent = "⧗ " + p.detail + " 尚未纳入检查点"; return; }
        var cp = parseNote(p.checkpoint);
        return verifyNote(cp, gatewayName()).then(function (signed) {
          if (!signed.ok) throw new Error("checkpoint signature NOT verified: " + signed.reason);
          var leaf = sm3(cat(new Uint8Array([0]), unb64(p.entry_b64)));
          if (hex(leaf) !== p.leaf_hash) throw new Error("entry bytes do not hash to the leaf");
          if (cp.size !== p.tree_size) throw new Error("proof is for another tree size");
          var root = rootFromInclusion(index, p.tree_size, leaf, p.audit_path.map(unhex));
          if (hex(root) !== hex(cp.root)) throw new Error("root does not match the checkpoint");
          out.textContent = "✓ included in checkpoint " + cp.size + " (SM3, signature SM2, checked in browser) 已验证";
          out.className = "proof-result ok";
          out.dataset.verified = "true";
        });
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
  showSignature();
  window.tongbanProof = { rootFromInclusion: rootFromInclusion, sm3: sm3, parseNote: parseNote, verifyNote: verifyNote };
})();
