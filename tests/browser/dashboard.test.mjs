// Browser tests for the operator dashboard (static/dashboard.html, served at GET /dashboard).
//
//   cargo build                       # in the repository root
//   cd tests/browser && npm ci && npm test
//
// Env: WSHUB_BIN (default ../../target/debug/wshub), CHROMIUM_BIN (default /usr/bin/chromium).
// The screenshot goes to target/browser-artifacts/dashboard.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { ARTIFACTS, startHub, stopHub, notifyOk, launchBrowser, openPage, sleep } from './lib.mjs';

let browser;
const hubs = [];
const pages = [];

before(async () => { browser = await launchBrowser(); });
after(async () => {
  for (const p of pages) await p.context.close().catch(() => {});
  if (browser) await browser.close();
  for (const h of hubs) await stopHub(h).catch(() => {});
});

async function hub(opts) { const h = await startHub(opts); hubs.push(h); return h; }
async function page(url, opts) { const p = await openPage(browser, url, opts); pages.push(p); return p; }

const waitLive = (pg, timeout = 10000) =>
  pg.waitForFunction(() => document.querySelector('#state')?.dataset.state === 'live', null, { timeout });
const waitText = (pg, selector, text, timeout = 3000) =>
  pg.waitForFunction(([s, t]) => document.querySelector(s)?.textContent.trim() === t, [selector, text], { timeout });

/** Opens `n` WebSocket clients (optionally with tokens) from a plain page of the hub's origin. */
async function openClients(h, tokens) {
  const p = await page(`${h.base}/health`);
  await p.page.evaluate((urls) => Promise.all(urls.map((url) => new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    (window.sockets ||= []).push(ws);
    ws.onmessage = (m) => { if (JSON.parse(m.data).type === 'hub:connected') resolve(); };
    ws.onerror = () => reject(new Error(`cannot connect ${url}`));
  }))), tokens.map((t) => `ws://127.0.0.1:${h.port}/ws${t ? `?token=${t}` : ''}`));
  return p;
}

async function devToken(h, sub, role) {
  const r = await fetch(`${h.base}/dev/token`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ sub, role }),
  });
  assert.equal(r.status, 200, 'POST /dev/token');
  return (await r.json()).token;
}

// ---------------------------------------------------------------------------------------------
test('dashboard loads, counts connections, and shows a posted notification within 2 s', async () => {
  const h = await hub({ name: 'dashboard', dev: true });
  const tokens = [
    await devToken(h, 'alice', 'customer'), await devToken(h, 'bob', 'customer'),
    await devToken(h, 'carol', 'staff'), null, null,
  ];
  const clients = await openClients(h, tokens);
  // one client follows a channel, so "busiest channels" has more than automatic streams
  await clients.page.evaluate(() => window.sockets.slice(0, 3).forEach((ws) => ws.send(JSON.stringify({ type: 'subscribe', channel: 'orders' }))));

  const { page: pg, errors } = await page(`${h.base}/dashboard`);
  await waitLive(pg);
  // five clients: without --api-key there are no operator sockets, so the dashboard polls /stats
  // instead of holding a connection of its own
  await waitText(pg, '#connections', '5');
  await waitText(pg, '#authenticated', '3');
  await pg.waitForFunction(() => document.querySelector('#roles li[data-name="customer"] .n')?.textContent === '2', null, { timeout: 3000 });

  // a notification posted now shows up in the event list within 2 s, with targets and recipients
  const ev = await notifyOk(h, { type: 'order.created', message: 'Order #1042 placed', channel: 'orders', data: { id: 1042 } });
  const posted = Date.now();
  await pg.waitForSelector(`#events-list li.event[data-id="${ev.id}"]`, { timeout: 2000 });
  const item = pg.locator(`#events-list li.event[data-id="${ev.id}"]`);
  assert.ok(Date.now() - posted <= 2000);
  assert.match(await item.textContent(), /order\.created/);
  assert.match(await item.textContent(), /Order #1042 placed/);
  assert.equal((await item.locator('.chip').allTextContents()).join(','), 'orders');
  await pg.waitForFunction((id) => document.querySelector(`li.event[data-id="${id}"] .count`)?.textContent === '3', ev.id, { timeout: 2000 });

  // a little traffic so the charts have a shape, then the counters move live
  await notifyOk(h, { type: 'shift.started', message: 'Evening shift', role: 'staff' });
  await notifyOk(h, { type: 'dm', message: 'Your table is ready', user: 'alice' });
  for (let i = 0; i < 12; i++) {
    await notifyOk(h, { type: 'tick', message: `heartbeat ${i}` });
    await sleep(200);
  }
  await pg.waitForFunction(() => Number(document.querySelector('#events-total')?.textContent) >= 15, null, { timeout: 3000 });
  await clients.page.evaluate(() => window.sockets.pop().close());
  await waitText(pg, '#connections', '4');
  await waitText(pg, '#connections-total', '5');
  const chartPixels = await pg.evaluate(() => {
    const c = document.querySelector('#chart-events');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let coloured = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i + 1] > d[i] + 40) coloured++;
    return coloured;
  });
  assert.ok(chartPixels > 50, `events chart is drawn (${chartPixels} coloured pixels)`);
  assert.equal((await pg.textContent('#slow-consumers')).trim(), '0');
  assert.notEqual((await pg.textContent('#rss')).trim(), '—');

  await pg.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });
  assert.deepEqual(errors, [], 'no console errors');
});

// ---------------------------------------------------------------------------------------------
test('with --api-key the dashboard asks for the key and keeps it for the tab', async () => {
  const h = await hub({ name: 'dashboard-key', extra: ['--api-key', 'dash-secret-key'] });
  const { page: pg, context, errors } = await page(`${h.base}/dashboard`);
  const socketUrls = [];
  pg.on('websocket', (ws) => socketUrls.push(ws.url()));
  await pg.waitForSelector('#lock.shown', { timeout: 5000 });
  assert.equal(await pg.getAttribute('#state', 'data-state'), 'locked');

  await pg.fill('#api-key', 'wrong-key');
  await pg.click('#key-submit');
  await pg.waitForFunction(() => /not accepted/.test(document.querySelector('#key-error').textContent)
    && document.querySelector('#lock').classList.contains('shown'), null, { timeout: 5000 });

  await pg.fill('#api-key', 'dash-secret-key');
  await pg.click('#key-submit');
  await waitLive(pg);
  await waitText(pg, '#connections', '1');
  assert.equal(await pg.evaluate(() => sessionStorage.getItem('wshub.dashboard.apiKey')), 'dash-secret-key');

  // a reload in the same tab goes straight to live, without asking again
  await pg.reload();
  await waitLive(pg);
  assert.equal(await pg.isVisible('#lock'), false);
  const r = await fetch(`${h.base}/notify`, {
    method: 'POST', headers: { 'Content-Type': 'application/json', 'X-API-Key': 'dash-secret-key' },
    body: JSON.stringify({ type: 'keyed', message: 'with a key' }),
  });
  const ev = await r.json();
  await pg.waitForSelector(`#events-list li.event[data-id="${ev.id}"]`, { timeout: 2000 });
  // the key travels in the first frame, never in a URL (access logs, history, Referer)
  assert.ok(socketUrls.length >= 2, `${socketUrls}`);
  assert.ok(socketUrls.every((u) => !u.includes('dash-secret-key') && !u.includes('api_key')), `${socketUrls}`);
  await context.close();
  // Chromium itself logs the two expected 401s of /stats; nothing else may fail.
  assert.deepEqual(errors.filter((e) => !/status of 401/.test(e)), [], 'no other console errors');
});
