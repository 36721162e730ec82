// Refreshes the JavaScript the gateway vendors from npm: Swagger UI for /docs and
// sm-crypto for the officer page. Usage (from browser-tests/): node vendor.mjs
//
// Each package is fetched with `npm pack` (the registry tarball only: nothing is installed,
// no install script runs; swagger-ui-dist's @scarf/scarf install-time analytics never
// does), its tarball checked against the sha512 pinned below, and the listed files copied
// byte for byte. gateway/static/README.md, the provenance record, is rewritten with the
// SHA-256 of every copied file; tests/test_docs_browser.py checks the tree against it.
// To upgrade: change a version and its integrity (`npm view <pkg>@<version> dist.integrity`),
// run this, and run tests/test_docs_browser.py and tests/test_pages_browser.py.
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "..");

const PACKAGES = [
  {
    name: "swagger-ui-dist",
    version: "5.35.0",
    license: "Apache-2.0",
    integrity: "sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==",
    why: "/docs: the Swagger UI bundle and its style sheet (gateway/static/docs-init.js, ours, starts it)",
    files: {
      "swagger-ui-bundle.js": "gateway/static/swagger-ui-bundle.js",
      "swagger-ui.css": "gateway/static/swagger-ui.css",
      "swagger-ui-bundle.js.LICENSE.txt": "gateway/static/swagger-ui-bundle.js.LICENSE.txt",
      LICENSE: "gateway/static/swagger-ui-dist.LICENSE",
      NOTICE: "gateway/static/swagger-ui-dist.NOTICE",
    },
  },
  {
    name: "sm-crypto",
    version: "0.5.8",
    license: "MIT",
    integrity: "sha512-bpz1/PthgZHcLHyIl28mbYZHmeuTDrdWpwHZ7BGzFjQuB7OOhjlbcPEMt44aqUfZ2S5YJXM8v20xYO1j9CC45Q==",
    why: "the officer page: SM3 for inclusion proofs, SM2 to verify the checkpoint signature (browser builds, globals `sm3` and `sm2`)",
    files: {
      "dist/sm2.js": "gateway/pages/static/sm2.js",
      "dist/sm3.js": "gateway/pages/static/sm3.js",
      LICENCE_MIT: "gateway/pages/static/sm-crypto.LICENSE",
    },
  },
  {
    name: "jsbn",
    version: "1.1.0",
    license: "MIT",
    integrity: "sha512-4bYVV3aAMtDTTu4+xsDYa6sy9GyJ69/amsu9sYF2zqjiEoZA5xJi3BrfX3uY+/IekIu7MwdObdbDWpoZdBv3/A==",
    why: "bundled inside sm-crypto's sm2.js (big integers); only its licence is copied",
    files: { LICENSE: "gateway/pages/static/jsbn.LICENSE" },
  },
];

const sha = (algo, data, enc) => createHash(algo).update(data).digest(enc);
const work = mkdtempSync(join(tmpdir(), "tongban-vendor-"));
const rows = [];
try {
  for (const pkg of PACKAGES) {
    const spec = `${pkg.name}@${pkg.version}`;
    const out = execFileSync("npm", ["pack", "--silent", "--pack-destination", work, spec],
      { encoding: "utf8" }).trim().split("\n").pop();
    const tarball = join(work, out);
    const got = "sha512-" + sha("sha512", readFileSync(tarball), "base64");
    if (got !== pkg.integrity) throw new Error(`${spec}: tarball integrity ${got}, pinned ${pkg.integrity}`);
    const dir = join(work, pkg.name);
    execFileSync("mkdir", ["-p", dir]);
    execFileSync("tar", ["-xzf", tarball, "-C", dir]);
    for (const [from, to] of Object.entries(pkg.files)) {
      copyFileSync(join(dir, "package", from), join(ROOT, to));
      rows.push(`| \`${to}\` | ${pkg.name} ${pkg.version} | \`package/${from}\` | \`${sha("sha256", readFileSync(join(ROOT, to)), "hex")}\` |`);
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

const sources = PACKAGES.map((p) =>
  `- **${p.name} ${p.version}** (${p.license}): ${p.why}. ` +
  `https://registry.npmjs.org/${p.name}/-/${p.name.split("/").pop()}-${p.version}.tgz, ` +
  `integrity \`${p.integrity}\`.`).join("\n");

writeFileSync(join(ROOT, "gateway/static/README.md"), `# Vendored JavaScript

The gateway serves its pages from its own files only (no CDN, nothing fetched from
elsewhere at run time). The files in the table below are third-party code and licences from
npm packages, copied unmodified from the registry tarballs by \`browser-tests/vendor.mjs\`
(this file is written by it: edit the script, not this file, and run
\`cd browser-tests && node vendor.mjs\`; \`tests/test_docs_browser.py\` checks every file
against its SHA-256 here):

${sources}

Ours, not vendored: \`docs.html\` and \`docs-init.js\` (the \`/docs\` page and the script
that starts Swagger UI on \`/openapi.json\`), \`gateway/pages/static/officer.js\` and
\`pages.css\`.

| file | package | from the tarball | SHA-256 |
| --- | --- | --- | --- |
${rows.join("\n")}
`);
console.log(rows.join("\n"));
