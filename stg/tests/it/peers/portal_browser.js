#!/usr/bin/env node
// The portal in headless Chromium (Debian `chromium`, driven by playwright-core): a wrong
// password shows "user or password incorrect"; the right one lands on the landing page; the
// session cookie is HttpOnly, Secure and SameSite=Strict; logging out ends the session (the
// landing page is refused afterwards). Each step's screenshot is read back with tesseract
// (OCR) and must show the expected text: what the user sees, not just the DOM.
//
//   node portal_browser.js BASE USER PASSWORD LANDING_TEXT OUT_DIR
//
// BASE: the portal's mount, e.g. https://127.0.0.1:8443/sercen (self-signed certificates are
// accepted); the landing page is the Location the login answers. LANDING_TEXT: a phrase the
// landing page shows. Screenshots go to OUT_DIR. Prints one line per step ('ok <step>'),
// exits non-zero on the first failure. playwright-core is found in NODE_PATH or in
// $STG_NODE_MODULES (scripts/install-test-deps puts it in ~/.cache/stg-test-deps).
'use strict';
const { execFileSync } = require('child_process');
const path = require('path');
const os = require('os');

function playwright() {
  try {
    return require('playwright-core');
  } catch (_) {
    const dir = process.env.STG_NODE_MODULES ||
      path.join(os.homedir(), '.cache', 'stg-test-deps', 'node_modules');
    try {
      return require(path.join(dir, 'playwright-core'));
    } catch (e) {
      fail(`playwright-core not found in NODE_PATH nor ${dir}: run scripts/install-test-deps (${e.message})`);
    }
  }
}

function fail(msg) {
  console.log(`FAIL ${msg}`);
  process.exit(1);
}

// The text tesseract reads on a screenshot, lower-cased with whitespace collapsed.
function ocr(png) {
  let out;
  try {
    out = execFileSync('tesseract', [png, '-', '--psm', '3'], { encoding: 'utf8', timeout: 60000, stdio: ['ignore', 'pipe', 'ignore'] });
  } catch (e) {
    fail(`tesseract (Debian tesseract-ocr) could not read ${png}: ${e.message}`);
  }
  return out.toLowerCase().replace(/\s+/g, ' ');
}

async function shotShows(page, file, phrase) {
  await page.screenshot({ path: file, fullPage: true });
  const seen = ocr(file);
  if (!seen.includes(phrase.toLowerCase())) {
    fail(`${file} does not show "${phrase}"; OCR read: ${seen.slice(0, 300)}`);
  }
}

async function main() {
  const [base, user, password, landingText, outDir] = process.argv.slice(2);
  if (!outDir) fail('usage: portal_browser.js BASE USER PASSWORD LANDING_TEXT OUT_DIR');
  const { chromium } = playwright();
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    timeout: 30000,
  });
  try {
    const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 800, height: 600 } });
    context.setDefaultTimeout(15000);
    const page = await context.newPage();

    // The login page.
    let r = await page.goto(`${base}/login`);
    if (r.status() !== 200) fail(`GET ${base}/login: ${r.status()}`);
    await shotShows(page, path.join(outDir, '1-login.png'), 'password');
    console.log('ok login page');

    // A wrong password: the message, no session.
    await page.fill('#user', user);
    await page.fill('#password', `${password}-wrong`);
    await Promise.all([page.waitForLoadState('load'), page.click('button[type=submit]')]);
    await page.waitForSelector('.error');
    await shotShows(page, path.join(outDir, '2-wrong.png'), 'user or password incorrect');
    if ((await context.cookies()).length !== 0) fail('a cookie after a wrong password');
    console.log('ok wrong password');

    // The right one: the landing page, a locked-down cookie.
    await page.fill('#user', user);
    await page.fill('#password', password);
    const [nav] = await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    if (!nav || nav.status() !== 200) fail(`landing page: ${nav && nav.status()}`);
    const landing = page.url();
    await shotShows(page, path.join(outDir, '3-landing.png'), landingText);
    const cookies = await context.cookies();
    if (cookies.length !== 1) fail(`expected one cookie, got ${JSON.stringify(cookies)}`);
    const c = cookies[0];
    if (!c.httpOnly || !c.secure || c.sameSite !== 'Strict') fail(`cookie not locked down: ${JSON.stringify(c)}`);
    if (await page.evaluate(() => document.cookie) !== '') fail('the session cookie is visible to scripts');
    console.log(`ok logged in (${landing})`);

    // Log out as a page would (a form POST), then the landing page is refused.
    await Promise.all([
      page.waitForNavigation(),
      page.evaluate((action) => {
        const f = document.createElement('form');
        f.method = 'post';
        f.action = action;
        document.body.appendChild(f);
        f.submit();
      }, `${base}/logout`),
    ]);
    await page.waitForSelector('#password');
    if ((await context.cookies()).length !== 0) fail('the cookie survived the logout');
    r = await page.goto(landing);
    if (r.status() !== 401) fail(`landing page after logout: ${r.status()}`);
    await page.goto(`${base}/login`);
    await shotShows(page, path.join(outDir, '4-logged-out.png'), 'log in');
    console.log('ok logged out');
  } finally {
    await browser.close();
  }
}

main().catch((e) => fail(e.stack || String(e)));
