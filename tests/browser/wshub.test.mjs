// Browser tests for the wshub test page (static/index.html) and client (static/wshub.js).
//
//   cargo build                       # in the repository root
//   cd tests/browser && npm ci && npm test
//
// Env: WSHUB_BIN (default ../../target/debug/wshub), CHROMIUM_BIN (default /usr/bin/chromium).
// Every test starts its own hub on a free 127.0.0.1 port. Screenshots and hub logs go to
// target/browser-artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  ARTIFACTS, startHub, stopHub, notifyOk, launchBrowser, openPage, waitState, eventIds,
  countBy, tempDir, hubSupports, sleep,
} from './lib.mjs';

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
async function page(h, opts) { const p = await openPage(browser, `${h.base}/`, opts); pages.push(p); return p; }

/** Wait until the page's list holds every id in `ids`. */
async function waitEvents(pg, ids, timeout = 2000) {
  await pg.waitForFunction((want) => {
    const have = new Set([...document.querySelectorAll('#events li.event')].map((e) => e.dataset.id));
    return want.every((id) => have.has(id));
  }, ids, { timeout });
}

// ---------------------------------------------------------------------------------------------
test('(a) test page loads, shows connected, and shows a posted notification within 2 s', async () => {
  const h = await hub({ name: 'a' });

  // the page's client script is served with a JavaScript content type
  const js = await fetch(`${h.base}/wshub.js`);
  assert.equal(js.status, 200, '/wshub.js status');
  assert.match(js.headers.get('content-type') || '', /javascript/, '/wshub.js content-type');

  const { page: pg, errors } = await page(h);
  await waitState(pg, 'connected');
  assert.equal((await pg.textContent('#state')).trim(), 'connected');
  assert.ok((await pg.textContent('#client-id')).trim() !== '—', 'client id shown after hub:connected');

  // a notification posted over HTTP by the test shows up
  const ev = await notifyOk(h, { type: 'test', message: 'hello from the browser test', data: { n: 42 } });
  await waitEvents(pg, [ev.id]);
  const item = pg.locator(`#events li.event[data-id="${ev.id}"]`);
  const text = await item.textContent();
  assert.match(text, /hello from the browser test/);
  assert.match(text, /"n": ?42/);
  assert.equal(await item.getAttribute('data-type'), 'test');
  assert.equal(await item.getAttribute('data-channel'), 'broadcast');
  assert.match(await item.getAttribute('data-seq'), /^\d+$/, 'seq shown');
  assert.equal((await pg.textContent('#received-count')).trim(), '1');

  // the page's own form posts to /notify and shows the answer; the event arrives too
  await pg.selectOption('#notify-type', 'alert');
  await pg.fill('#notify-message', 'sent from the form');
  await pg.fill('#notify-data', '{"reservaId": "7"}');
  await pg.click('#notify-btn');
  await pg.waitForFunction(() => /HTTP \d+/.test(document.querySelector('#notify-result').textContent), null, { timeout: 2000 });
  const answer = await pg.textContent('#notify-result');
  assert.match(answer, /HTTP 200/);
  const formId = JSON.parse(answer.replace(/^HTTP \d+\n/, '')).id;
  await waitEvents(pg, [formId]);
  assert.equal(await pg.getAttribute(`#events li.event[data-id="${formId}"]`, 'data-type'), 'alert');
  assert.equal((await pg.textContent('#sent-count')).trim(), '1');
  // newest first
  assert.deepEqual((await eventIds(pg)).slice(0, 2), [formId, ev.id]);

  await pg.evaluate(() => window.scrollTo(0, 0));
  await pg.screenshot({ path: join(ARTIFACTS, 'test-page.png'), fullPage: true });

  // a bad JSON data field is caught in the page, nothing is posted
  await pg.fill('#notify-data', '{oops');
  await pg.click('#notify-btn');
  assert.match(await pg.textContent('#notify-result'), /not valid JSON/);

  assert.deepEqual(errors, [], 'no console errors');

  // without --dev, "mint dev token" explains that /dev/token needs --dev (after the console
  // check: Chromium logs the 404 itself)
  await pg.click('#mint-token');
  await pg.waitForFunction(() => /--dev/.test(document.querySelector('#dev-token-result').textContent), null, { timeout: 2000 });
});

// ---------------------------------------------------------------------------------------------
test('(a2) wshub.mjs: ES module entry exports the same Wshub', async () => {
  const h = await hub({ name: 'a2' });
  const { page: pg } = await page(h);
  await waitState(pg, 'connected');
  const r = await fetch(`${h.base}/wshub.mjs`);
  assert.equal(r.status, 200, 'GET /wshub.mjs (the server must serve static/wshub.mjs as application/javascript)');
  assert.match(r.headers.get('content-type') || '', /javascript/);
  const same = await pg.evaluate(async () => {
    const m = await import('/wshub.mjs');
    return m.Wshub === window.Wshub && m.default === window.Wshub;
  });
  assert.ok(same);
});

// ---------------------------------------------------------------------------------------------
test('(a3) test page shows who it is connected as, and explains --dev next to minting', async () => {
  const h = await hub({ name: 'a3', dev: true });
  const { page: pg, errors } = await page(h);
  await waitState(pg, 'connected');
  assert.equal((await pg.textContent('#identity-user')).trim(), 'anonymous');
  assert.match(await pg.textContent('#dev-hint'), /--dev/);
  await pg.fill('#dev-sub', 'alice');
  await pg.fill('#dev-role', 'staff');
  await pg.click('#mint-token');
  await pg.waitForFunction(() => document.querySelector('#identity-user').textContent === 'user alice', null, { timeout: 5000 });
  assert.equal((await pg.textContent('#identity-roles')).trim(), 'staff');
  await pg.fill('#channel', 'room-9');
  await pg.click('#subscribe-btn');
  await pg.waitForFunction(() => /room-9/.test(document.querySelector('#identity-channels').textContent), null, { timeout: 5000 });
  const channels = (await pg.textContent('#identity-channels')).split(', ');
  for (const ch of ['user:alice', 'role:staff', 'room-9']) assert.ok(channels.includes(ch), `${ch} in ${channels}`);
  assert.deepEqual(errors, []);
});

// ---------------------------------------------------------------------------------------------
test('(b) resume across a hub restart with --data-dir: missed events once, no duplicates', async (t) => {
  assert.ok(hubSupports('--data-dir'), 'wshub --help does not list --data-dir');
  const dev = hubSupports('--dev');
  const dataDir = tempDir();
  let h = await hub({ name: 'b', dataDir, dev });
  const port = h.port;
  const { page: pg, errors } = await page(h, { allowWsErrors: true });
  await waitState(pg, 'connected');

  // With --dev: log in as alice through the page's "mint dev token" button, so the connection
  // is in user:alice too (used below to check cross-stream dedupe).
  if (dev) {
    await pg.fill('#dev-sub', 'alice');
    await pg.fill('#dev-role', 'staff');
    await pg.click('#mint-token');
    await pg.waitForFunction(() => document.querySelector('#dev-token-result').classList.contains('ok'), null, { timeout: 3000 });
    await pg.waitForFunction(() => window.hub.state === 'connected' && window.hub.user === 'alice', null, { timeout: 5000 });
  } else {
    t.diagnostic('wshub has no --dev: skipping the user:alice cross-stream part');
  }

  // record every notification the app gets, and recovery reports
  await pg.evaluate(() => {
    window.got = []; window.recov = []; window.missed = [];
    window.hub.on('*', (n) => window.got.push(n.id));
    window.hub.on('recovered', (r) => window.recov.push(r));
    window.hub.on('missed', (m) => window.missed.push(m));
  });
  // subscribe to a channel through the page UI
  await pg.fill('#channel', 'room-1');
  await pg.click('#subscribe-btn');
  await pg.waitForSelector('#subscriptions li.subscription[data-channel="room-1"]:not(.pending)', { timeout: 3000 });

  const early = [];
  early.push((await notifyOk(h, { type: 'test', message: 'before 1' })).id);
  early.push((await notifyOk(h, { type: 'update', message: 'before 2', channel: 'room-1' })).id);
  early.push((await notifyOk(h, { type: 'test', message: 'before 3' })).id);
  await waitEvents(pg, early);
  assert.deepEqual(await pg.evaluate(() => window.got), early, 'early events delivered once, in order');
  await pg.evaluate(() => { window.got = []; });

  // --- 1. deterministic: the page is disconnected (hub.close()) while the hub restarts and
  // events are posted; hub.connect() must resume both the automatic streams and room-1.
  await pg.evaluate(() => window.hub.close());
  await waitState(pg, 'closed');
  await stopHub(h);
  h = await hub({ name: 'b', dataDir, dev, port });
  const gap = [];
  gap.push((await notifyOk(h, { type: 'test', message: 'gap broadcast' })).id);
  gap.push((await notifyOk(h, { type: 'update', message: 'gap room-1', channel: 'room-1' })).id);
  if (dev) gap.push((await notifyOk(h, { type: 'alert', message: 'gap alice+room-1', user: 'alice', channel: 'room-1' })).id);
  gap.push((await notifyOk(h, { type: 'test', message: 'gap broadcast 2' })).id);
  await pg.evaluate(() => window.hub.connect());
  await waitState(pg, 'connected');
  await waitEvents(pg, gap, 5000);
  await sleep(500);           // let any duplicate arrive
  let counts = countBy(await pg.evaluate(() => window.got));
  for (const id of gap) assert.equal(counts.get(id), 1, `gap event ${id} delivered exactly once to the app`);
  for (const id of early) assert.equal(counts.get(id) || 0, 0, `early event ${id} not replayed to the app`);
  let dom = countBy(await eventIds(pg));
  for (const id of [...early, ...gap]) assert.equal(dom.get(id), 1, `event ${id} listed once`);
  const recov = await pg.evaluate(() => window.recov);
  assert.deepEqual(await pg.evaluate(() => window.missed), [], 'no missed: history was kept in --data-dir');
  assert.ok(recov.some((r) => r.stream === 'auto' && r.recovered), `auto streams recovered: ${JSON.stringify(recov)}`);
  assert.ok(recov.some((r) => r.stream === 'room-1' && r.recovered), `room-1 recovered: ${JSON.stringify(recov)}`);

  // --- 2. natural: the hub goes away (1001) and comes back; the page reconnects by itself with
  // backoff. Events posted right after the restart (most likely before the page is back) must
  // arrive exactly once.
  await pg.evaluate(() => { window.got = []; window.recov = []; });
  const reconnectsBefore = Number(await pg.textContent('#reconnect-count'));
  await stopHub(h);
  await waitState(pg, 'reconnecting', 5000);
  h = await hub({ name: 'b', dataDir, dev, port });
  const gap2 = [];
  for (let i = 1; i <= 3; i++) gap2.push((await notifyOk(h, { type: 'notification', message: `after restart ${i}` })).id);
  await waitState(pg, 'connected', 35000);
  await waitEvents(pg, gap2, 5000);
  await sleep(500);
  counts = countBy(await pg.evaluate(() => window.got));
  for (const id of gap2) assert.equal(counts.get(id), 1, `event ${id} delivered exactly once`);
  for (const id of [...early, ...gap]) assert.equal(counts.get(id) || 0, 0, `old event ${id} not delivered again`);
  dom = countBy(await eventIds(pg));
  for (const [id, n] of dom) assert.equal(n, 1, `event ${id} listed ${n} times`);
  assert.ok(Number(await pg.textContent('#reconnect-count')) > reconnectsBefore, 'reconnect counter moved');
  t.diagnostic(`natural reconnect recovery reports: ${JSON.stringify(await pg.evaluate(() => window.recov))}`);
  assert.deepEqual(errors, [], 'no console errors besides WebSocket connection failures');
});

// ---------------------------------------------------------------------------------------------
test('(c) wshub.js: subscribe/unsubscribe promises, acks, and missed after a memory-mode restart', async () => {
  let h = await hub({ name: 'c' });
  const port = h.port;
  const { page: pg, errors } = await page(h, { allowWsErrors: true });
  await waitState(pg, 'connected');

  // A second client in the page, with every frame it sends recorded.
  await pg.evaluate(async () => {
    const sent = (window.sentFrames = []);
    const send = WebSocket.prototype.send;
    WebSocket.prototype.send = function (d) { sent.push(String(d)); return send.call(this, d); };
    const c = (window.c = new window.Wshub({ ackBatchMs: 100 }));
    window.cGot = []; window.cMissed = []; window.cStates = [];
    c.on('*', (n) => window.cGot.push(n));
    c.on('missed', (m) => window.cMissed.push(m));
    c.on('state', (s) => window.cStates.push(s));
    c.connect();
    await new Promise((r) => c.on('hub:connected', r));
  });
  assert.ok(await pg.evaluate(() => typeof window.c.clientId === 'string' && window.c.clientId.length > 0), 'clientId set');

  // hub.clientId as /notify exclude_client: this client skips its own echo, the page's gets it
  const clientId = await pg.evaluate(() => window.c.clientId);
  const echo = await notifyOk(h, { type: 'echo', exclude_client: clientId });
  const after = await notifyOk(h, { type: 'after-echo' });
  await pg.waitForFunction((id) => window.cGot.some((n) => n.id === id), after.id, { timeout: 2000 });
  await waitEvents(pg, [echo.id, after.id]);
  assert.ok(!(await pg.evaluate((id) => window.cGot.some((n) => n.id === id), echo.id)), 'excluded client got its echo');

  // subscribe resolves with hub:subscribed
  const sub = await pg.evaluate(() => window.c.subscribe('room-a'));
  assert.equal(sub.type, 'hub:subscribed');
  assert.equal(sub.channel, 'room-a');
  assert.equal(typeof sub.seq, 'number');
  assert.equal(typeof sub.epoch, 'string');

  // subscribe rejects on hub:error for that channel
  const bad = await pg.evaluate(() => window.c.subscribe('bad channel!').then(() => 'resolved', (e) => e.code));
  assert.equal(bad, 'bad_channel');
  const reserved = await pg.evaluate(() => window.c.subscribe('broadcast').then(() => 'resolved', (e) => e.code));
  assert.ok(['bad_channel', 'forbidden'].includes(reserved), `subscribe('broadcast') → ${reserved}`);
  assert.deepEqual(await pg.evaluate(() => window.c.subscriptions()), ['room-a']);

  // a channel event arrives, with channel + seq, and is acked in a batch
  const chEv = await notifyOk(h, { type: 'update', message: 'for room-a', channel: 'room-a' });
  const bcEv = await notifyOk(h, { type: 'test', message: 'for all' });
  await pg.waitForFunction((ids) => ids.every((id) => window.cGot.some((n) => n.id === id)), [chEv.id, bcEv.id], { timeout: 2000 });
  const got = await pg.evaluate(() => window.cGot.map((n) => ({ id: n.id, channel: n.channel, seq: n.seq })));
  assert.equal(got.find((n) => n.id === chEv.id).channel, 'room-a');
  assert.equal(got.find((n) => n.id === bcEv.id).channel, 'broadcast');
  assert.ok(got.every((n) => typeof n.seq === 'number'));
  await pg.waitForFunction((ids) => {
    const acked = window.sentFrames.map((f) => JSON.parse(f)).filter((f) => f.type === 'ack').flatMap((f) => f.ids || [f.id]);
    return ids.every((id) => acked.includes(id));
  }, [chEv.id, bcEv.id], { timeout: 2000 });
  const frames = await pg.evaluate(() => window.sentFrames);
  assert.ok(frames.every((f) => new TextEncoder().encode(f).length <= 512), 'no frame over 512 bytes');

  // unsubscribe resolves with hub:unsubscribed; later channel events do not arrive
  const unsub = await pg.evaluate(() => window.c.unsubscribe('room-a'));
  assert.equal(unsub.type, 'hub:unsubscribed');
  const after1 = await notifyOk(h, { type: 'update', message: 'room-a after unsubscribe', channel: 'room-a' });
  const sentinel = await notifyOk(h, { type: 'test', message: 'sentinel' });
  await pg.waitForFunction((id) => window.cGot.some((n) => n.id === id), sentinel.id, { timeout: 2000 });
  assert.ok(!(await pg.evaluate((id) => window.cGot.some((n) => n.id === id), after1.id)), 'no event after unsubscribe');

  // memory-mode restart: new epoch, history gone → 'missed' for the automatic streams and for
  // the re-subscribed channel, then live events flow again.
  await pg.evaluate(() => window.c.subscribe('room-m'));
  await stopHub(h);
  await pg.waitForFunction(() => window.c.state === 'reconnecting', null, { timeout: 5000 });
  h = await hub({ name: 'c', port });
  await pg.waitForFunction(() => window.c.state === 'connected', null, { timeout: 35000 });
  await pg.waitForFunction(() => window.cMissed.some((m) => m.stream === 'room-m'), null, { timeout: 5000 });
  const missed = await pg.evaluate(() => window.cMissed);
  assert.ok(missed.some((m) => m.stream === 'auto'), `missed for the automatic streams: ${JSON.stringify(missed)}`);
  assert.ok(missed.some((m) => m.stream === 'room-m'), `missed for room-m: ${JSON.stringify(missed)}`);
  const live = await notifyOk(h, { type: 'test', message: 'after memory restart', channel: 'room-m' });
  await pg.waitForFunction((id) => window.cGot.some((n) => n.id === id), live.id, { timeout: 2000 });
  const states = await pg.evaluate(() => window.cStates);
  assert.deepEqual(states.slice(0, 2), ['connecting', 'connected']);
  assert.ok(states.includes('reconnecting'));

  // close() → state closed, no reconnect
  await pg.evaluate(() => window.c.close());
  assert.equal(await pg.evaluate(() => window.c.state), 'closed');
  assert.deepEqual(errors, []);
});

// ---------------------------------------------------------------------------------------------
test('(d) a refused token (close 4001): getToken is retried once, then state closed + error', async () => {
  assert.ok(hubSupports('--dev'), 'wshub --help does not list --dev (needed for tokens in this test)');
  const h = await hub({ name: 'd', dev: true });
  const { page: pg } = await page(h, { allowWsErrors: true });
  await waitState(pg, 'connected');
  const r = await pg.evaluate(() => new Promise((resolve) => {
    let calls = 0;
    const c = new window.Wshub({ getToken: async () => { calls++; return 'not-a-jwt'; } });
    const errs = [];
    c.on('error', (e) => errs.push(e.code));
    c.on('state', (s) => { if (s === 'closed') setTimeout(() => resolve({ calls, errs, state: c.state }), 300); });
    c.connect();
    setTimeout(() => resolve({ calls, errs, state: c.state, timeout: true }), 8000);
  }));
  assert.equal(r.state, 'closed', JSON.stringify(r));
  assert.equal(r.calls, 2, 'getToken asked twice (once more after 4001)');
  assert.ok(r.errs.includes('unauthorized'), JSON.stringify(r));

  // and a valid dev token works
  const tok = await fetch(`${h.base}/dev/token`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ sub: 'bob', role: 'staff' }) });
  assert.equal(tok.status, 200);
  const { token } = await tok.json();
  const user = await pg.evaluate((t) => new Promise((resolve) => {
    const c = new window.Wshub({ token: t });
    c.on('hub:connected', (m) => { resolve({ user: m.user, channels: m.channels }); c.close(); });
    c.connect();
  }), token);
  assert.equal(user.user, 'bob');
  assert.ok(user.channels.includes('user:bob') && user.channels.includes('broadcast'), JSON.stringify(user));
});
