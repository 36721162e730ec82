// Drives the officer and citizen pages in headless Chromium (Debian's /usr/bin/chromium).
// Usage: node pages.mjs '<json config>'   (written by tests/test_pages_browser.py)
// Prints one JSON object with what it saw; the pytest side asserts on it.
import { chromium } from "playwright-core";

const cfg = JSON.parse(process.argv[2]);
const base = cfg.url;
const out = { steps: [] };
const shot = (page, name) =>
  page.screenshot({ path: `${cfg.screenshots}/${name}.png`, fullPage: true });

async function token(clientId) {
  const basic = Buffer.from(`${clientId}:${cfg.secrets[clientId]}`).toString("base64");
  const r = await fetch(`${base}/oauth/token`, {
    method: "POST",
    headers: { Authorization: `Basic ${basic}`, "Content-Type": "application/x-www-form-urlencoded" },
    body: "grant_type=client_credentials",
  });
  return (await r.json()).access_token;
}

async function check(clientId, body) {
  const r = await fetch(`${base}/v1/checks`, {
    method: "POST",
    headers: { Authorization: `Bearer ${await token(clientId)}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

const rowsOf = (page) =>
  page.$$eval("#entries tbody tr[data-index]", (trs) =>
    trs.map((tr) => ({ index: +tr.dataset.index, requester: tr.dataset.requester,
      claim: tr.dataset.claim, purpose: tr.dataset.purpose, result: tr.dataset.result,
      subject: tr.children[8].textContent.trim() })));

const browser = await chromium.launch({
  executablePath: cfg.chromium,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run"],
});
try {
  // --- officer ------------------------------------------------------------------------
  const officer = await browser.newContext({ viewport: { width: 1400, height: 900 }, locale: "zh-CN" });
  const page = await officer.newPage();
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  await page.goto(`${base}/officer/`);
  out.redirected_to_login = page.url().endsWith("/officer/login");
  await page.fill("#client_id", cfg.officer.client_id);
  await page.fill("#secret", cfg.officer.secret);
  await page.click("#officer-login button[type=submit]");
  await page.waitForSelector("#entries");
  out.signers = await page.$$eval("ul.signers li", (lis) =>
    lis.map((li) => ({ name: li.dataset.name, role: li.dataset.role, cls: li.className })));

  // 0. The checkpoint's gateway signature, verified in the browser (sm-crypto's SM2) ...
  const signature = async (p) => {
    await p.waitForSelector("#cp-signature[data-verified]");
    return p.$eval("#cp-signature", (el) => ({ verified: el.dataset.verified, text: el.textContent.trim(),
      key: (el.querySelector("code") || {}).textContent || null, pinned: el.dataset.pinned || null }));
  };
  out.signature = await signature(page);
  out.note = await page.textContent("#cp-note");
  // ... and NOT verified when the checkpoint is tampered with on its way to the browser:
  // its root changed in the note and on the page; only the root shown changed; the key
  // served is another; and, on a proof, the root in the proof's checkpoint changed.
  const flip = (b64) => (b64[0] === "A" ? "B" : "A") + b64.slice(1);
  const tamper = async (edit) => {
    const p = await officer.newPage();
    p.on("request", (r) => requests.push(r.url()));
    await p.route(`${base}/officer/`, async (route) => {
      const resp = await route.fetch();
      const html = await resp.text();
      const root = /id="cp-root">([^<]+)</.exec(html)[1];
      await route.fulfill({ response: resp, body: edit(html, root) });
    });
    await p.goto(`${base}/officer/`);
    return p;
  };
  let p = await tamper((html, root) => html.split(root).join(flip(root)));
  out.tampered_root = await signature(p);
  await p.close();
  p = await tamper((html, root) => html.replace(`id="cp-root">${root}<`, `id="cp-root">${flip(root)}<`));
  out.tampered_display = await signature(p);
  await p.close();
  // A JWK Set that does not hold the key that signed (another SM2 key): NOT verified.
  p = await officer.newPage();
  await p.route(`${base}/.well-known/jwks.json`, (route) => route.fulfill({ json: { keys: [cfg.other_key] } }));
  await p.goto(`${base}/officer/`);
  out.other_key = await signature(p);
  await p.close();
  // The key pinned at the first visit: a second visit says so ...
  p = await officer.newPage();
  await p.goto(`${base}/officer/`);
  out.second_visit = await signature(p);
  await p.close();
  // ... and a checkpoint signed by another key, served with a JWK Set that holds that key
  // (both swapped), is NOT verified: the pinned key did not sign it ...
  p = await officer.newPage();
  await p.route(`${base}/.well-known/jwks.json`, (route) => route.fulfill({ json: { keys: [cfg.swapped.jwk] } }));
  await p.route(`${base}/officer/`, async (route) => {
    const resp = await route.fetch();
    const html = await resp.text();
    await route.fulfill({ response: resp, body: html.replace(/(<pre id="cp-note">)[^<]*(<\/pre>)/, `$1${cfg.swapped.note}$2`) });
  });
  await p.goto(`${base}/officer/`);
  out.swapped = await signature(p);
  // ... until the officer pins the new key by hand (a rotation announced by the operator).
  await p.click("#cp-pin");
  await p.waitForSelector('#cp-signature[data-verified="true"]');
  out.swapped_pinned = await signature(p);
  await p.close();
  p = await officer.newPage();
  p.on("request", (r) => requests.push(r.url()));
  await p.route(`${base}/officer/api/proof/*`, async (route) => {
    const resp = await route.fetch();
    const body = await resp.json();
    const lines = body.checkpoint.split("\n");
    lines[2] = flip(lines[2]);
    await route.fulfill({ response: resp, json: { ...body, checkpoint: lines.join("\n") } });
  });
  await p.goto(`${base}/officer/`);
  const some = await p.getAttribute("button.proof", "data-index");
  await p.click(`button.proof[data-index="${some}"]`);
  await p.waitForSelector(`#proof-${some}[data-verified]`);
  out.tampered_proof = await p.$eval(`#proof-${some}`, (el) => ({ verified: el.dataset.verified, text: el.textContent }));
  await p.close();
  out.steps.push("signature");

  // 1. Filter and find the denied insurer request.
  await page.fill("#f-requester", "insurer-a");
  await page.selectOption("#f-result", "denied");
  await Promise.all([page.waitForNavigation(), page.click("#f-apply")]);
  out.filtered = await rowsOf(page);
  await shot(page, "officer-filter");
  out.steps.push("filter");

  // 2. Verify that entry's inclusion proof in the browser.
  const first = out.filtered[0].index;
  await page.click(`button.proof[data-index="${first}"]`);
  await page.waitForSelector(`#proof-${first}[data-verified]`);
  out.proof = await page.$eval(`#proof-${first}`, (el) => ({ verified: el.dataset.verified, text: el.textContent }));
  await shot(page, "officer-proof");
  out.steps.push("proof");

  // 3. A burst of checks raises an anomaly flag, which links to the entries behind it.
  const thresholds = "burst_subjects=15&burst_minutes=10";
  await page.goto(`${base}/officer/?${thresholds}`);
  out.burst_flags_before = await page.$$eval(`li.flag-burst[data-requester="${cfg.burst.requester}"]`, (l) => l.length);
  const statuses = [];
  for (const subject of cfg.burst.subjects) {
    statuses.push((await check(cfg.burst.requester, { ...cfg.burst.body, subject: { id_number: subject } })).status);
  }
  out.burst_statuses = statuses;
  await page.goto(`${base}/officer/?${thresholds}`);
  const flag = page.locator(`li.flag-burst[data-requester="${cfg.burst.requester}"]`);
  out.burst_flags_after = await flag.count();
  out.burst_flag_text = await flag.first().textContent();
  await shot(page, "officer-anomaly");
  await Promise.all([page.waitForNavigation(), flag.first().locator("a.flag-link").click()]);
  out.burst_rows = await rowsOf(page);
  out.steps.push("anomaly");
  out.officer_offsite_requests = requests.filter((u) => !u.startsWith(base));
  await officer.close();

  // --- citizen ------------------------------------------------------------------------
  const ctx = await browser.newContext({ viewport: { width: 1300, height: 900 }, locale: "zh-CN" });
  const me = await ctx.newPage();
  await me.goto(`${base}/me/`);
  await me.fill("#token", cfg.citizen.token);
  await Promise.all([me.waitForNavigation(), me.click("#citizen-login button[type=submit]")]);
  await me.fill("#g-requester", "insurer-a");
  await me.check('input[name=purposes][value="insurance_claim"]');
  await me.check('input[name=claims][value="maternity_insurance_active"]');
  await me.fill("#g-days", "30");
  await me.fill("#g-uses", "3");
  await Promise.all([me.waitForNavigation(), me.click("#g-submit")]);
  const consentId = await me.getAttribute('#consent-list tr[data-status="active"]', "data-consent");
  out.consent_id = consentId;
  const body = { subject: { id_number: cfg.citizen.id_number }, claim: "maternity_insurance_active",
    purpose: "insurance_claim", params: {}, consent_id: consentId };
  const allowed = await check("insurer-a", body);
  out.check_with_consent = { status: allowed.status, result: allowed.body.result };
  await me.reload();
  out.access_after_check = await me.$$eval("#access-log tbody tr[data-index]", (trs) =>
    trs.map((tr) => ({ requester: tr.dataset.requester, result: tr.dataset.result })));
  await shot(me, "citizen-consent");
  await Promise.all([me.waitForNavigation(), me.click(`button.revoke[data-consent="${consentId}"]`)]);
  out.status_after_revoke = await me.getAttribute(`#consent-list tr[data-consent="${consentId}"]`, "data-status");
  const refused = await check("insurer-a", body);
  out.check_after_revoke = { status: refused.status, type: refused.body.type };
  await me.reload();
  out.access_after_revoke = await me.$$eval("#access-log tbody tr[data-index]", (trs) =>
    trs.map((tr) => ({ requester: tr.dataset.requester, result: tr.dataset.result })));
  out.citizen_html_has_full_id = (await me.content()).includes(cfg.citizen.id_number);
  await shot(me, "citizen-revoked");
  out.steps.push("citizen");
  await ctx.close();
} catch (err) {
  out.error = String(err && err.stack || err);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
