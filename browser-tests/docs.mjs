// Drives /docs (Swagger UI) in headless Chromium (Debian's /usr/bin/chromium): the
// operations are listed, Authorize does OAuth 2.0 client credentials, and "Try it out" on
// POST /v1/checks gets a signed answer.
// Usage: node docs.mjs '<json config>'   (written by tests/test_docs_browser.py)
// Prints one JSON object with what it saw; the pytest side asserts on it.
import { chromium } from "playwright-core";

const cfg = JSON.parse(process.argv[2]);
const base = cfg.url;
const out = { steps: [], requests: [], console: [], page_errors: [] };
const shot = (page, name) =>
  page.screenshot({ path: `${cfg.screenshots}/${name}.png`, fullPage: false });

const browser = await chromium.launch({
  executablePath: cfg.chromium,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run"],
});
try {
  const ctx = await browser.newContext({ viewport: { width: 1300, height: 1000 }, locale: "zh-CN" });
  // Any CSP violation, reported or not on the console (this script is injected by the
  // browser driver, not by the page, so the page's CSP does not apply to it).
  await ctx.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  const page = await ctx.newPage();
  page.on("request", (r) => out.requests.push({ method: r.method(), url: r.url() }));
  page.on("console", (m) => out.console.push({ type: m.type(), text: m.text(), url: m.location().url }));
  page.on("pageerror", (e) => out.page_errors.push(String(e)));

  // 1. The page loads /openapi.json from this gateway and lists the operations.
  const loaded = await page.goto(`${base}/docs`);
  out.csp = loaded.headers()["content-security-policy"];
  await page.waitForSelector(".opblock", { timeout: 30000 });
  out.title = (await page.textContent(".info .title")).trim();
  out.operations = await page.$$eval(".opblock", (els) => els.map((el) => ({
    id: el.id,
    method: el.querySelector(".opblock-summary-method").textContent.trim(),
    path: el.querySelector(".opblock-summary-path").dataset.path,
  })));
  out.servers = await page.$$eval(".servers select option", (os) => os.map((o) => o.value));
  out.steps.push("listed");

  // 2. Authorize: OAuth 2.0 client credentials, with the client's id and secret.
  await page.click(".auth-wrapper button.authorize");
  const oauth = page.locator(".auth-container", { has: page.locator("h4", { hasText: "oauth2" }) });
  out.token_url_shown = (await oauth.locator("p", { hasText: "Token URL" }).textContent()).trim();
  await oauth.locator("#client_id_clientCredentials").fill(cfg.client.id);
  await oauth.locator("#client_secret_clientCredentials").fill(cfg.client.secret);
  await oauth.locator('label[for="checks-clientCredentials-checkbox-oauth2"]').click();
  const [tokenResponse] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/oauth/token")),
    oauth.locator(".auth-btn-wrapper button.authorize").click(),
  ]);
  const tokenRequest = tokenResponse.request();
  out.token = {
    status: tokenResponse.status(),
    url: tokenResponse.url(),
    basic: (tokenRequest.headers()["authorization"] || "").startsWith("Basic "),
    body: tokenRequest.postData(),
  };
  // Authorized: the dialog says so and offers to log out instead.
  await oauth.locator('button[aria-label="Remove authorization"]').waitFor();
  out.authorized = (await oauth.locator("h6").textContent()).trim();
  await shot(page, "docs-authorize");
  await oauth.locator("button.btn-done").first().click();
  await page.waitForSelector(".modal-ux", { state: "detached" });
  out.steps.push("authorized");

  // 3. Try it out: POST /v1/checks with a real ID number; the response panel shows 200.
  const op = page.locator("#operations-checks-check");
  await op.locator(".opblock-summary-control").click();
  await op.locator(".try-out__btn").click();
  await op.locator("textarea.body-param__text").fill(JSON.stringify(cfg.check, null, 2));
  const [checkResponse] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/v1/checks") && r.request().method() === "POST"),
    op.locator("button.execute").click(),
  ]);
  out.check_request = {
    url: checkResponse.url(),
    bearer: (checkResponse.request().headers()["authorization"] || "").startsWith("Bearer "),
  };
  const live = op.locator(".live-responses-table");
  await live.locator(".response-col_status").first().waitFor();
  out.panel_status = (await live.locator("tbody .response-col_status").first().textContent()).trim();
  out.panel_body = await live.locator(".response-col_description pre").first().textContent();
  await live.scrollIntoViewIfNeeded();
  await shot(page, "docs-try-it-out");
  out.steps.push("tried");
  out.csp_violations = await page.evaluate(() => window.__csp);
  const seen = out.console.length;

  // 4. The violation check can fail: an inline script, which the CSP refuses, is seen.
  await page.evaluate(() => {
    const s = document.createElement("script");
    s.textContent = "window.__inline = true;";
    document.body.append(s);
  });
  await page.waitForFunction(() => window.__csp.length > 0, null, { timeout: 5000 });
  out.control = {
    violations: await page.evaluate(() => window.__csp),
    inline_ran: await page.evaluate(() => window.__inline === true),
    console: out.console.slice(seen),
  };
  out.console = out.console.slice(0, seen);
  out.steps.push("control");
  out.offsite_requests = out.requests.map((r) => r.url).filter((u) => !u.startsWith(base + "/"));
  await ctx.close();
} catch (err) {
  out.error = String((err && err.stack) || err);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
