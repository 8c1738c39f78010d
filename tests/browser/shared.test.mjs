// One socket per browser: tabs of one origin share the leader tab's WebSocket through
// BroadcastChannel (static/wshub.js, "tabs"). Three tabs of one browser context against a real
// hub: one connection in /stats, every tab gets every event, onNotify runs in one tab per
// event, subscriptions are reference-counted across tabs, closing the leader tab hands over
// without loss or duplicates while events keep coming, and {shared:false} opts out.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, startHub, stopHub, notifyOk, launchBrowser, countBy, sleep } from './lib.mjs';

// The working copy of the client (the binary embeds it at build time).
const CLIENT_JS = readFileSync(join(ROOT, 'static/wshub.js'), 'utf8');

let browser;
const hubs = [];
before(async () => { browser = await launchBrowser(); });
after(async () => {
  if (browser) await browser.close();
  for (const h of hubs) await stopHub(h).catch(() => {});
});

async function hub(name) { const h = await startHub({ name }); hubs.push(h); return h; }

async function stats(h) { return (await fetch(`${h.base}/stats`)).json(); }

async function until(what, fn, timeout = 10000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/**
 * A browser context whose pages are on the hub's own origin (a secure context on 127.0.0.1, so
 * Web Locks are there) with wshub.js. Every page reports what its handlers see
 * to the test through exposed functions, so the record survives closing the page.
 */
async function newBrowserContext(h) {
  const context = await browser.newContext();
  const seen = { events: new Map() };   // tab -> [ids]
  await context.exposeBinding('reportEvent', (_src, tab, id) => {
    if (!seen.events.has(tab)) seen.events.set(tab, []);
    seen.events.get(tab).push(id);
  });
  const errors = [];
  const tabs = [];
  async function openTab(name, opts = {}, { noLocks = false } = {}) {
    const page = await context.newPage();
    // A browser without Web Locks (or an insecure origin): the BroadcastChannel election.
    if (noLocks) await page.addInitScript(() => { Object.defineProperty(Navigator.prototype, 'locks', { get: () => undefined }); });
    page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    page.on('console', (m) => {
      // the document is /health: Chromium asks for /favicon.ico, which the hub does not serve
      if (m.type() === 'error' && !/Failed to load resource.*404/.test(m.text())) errors.push(`${name}: ${m.text()}`);
    });
    // A document the hub itself serves (a page fulfilled by the test would count as a public
    // origin and Chromium's local-network checks would block its socket to 127.0.0.1).
    await page.goto(`${h.base}/health`);
    await page.addScriptTag({ content: CLIENT_JS });
    await page.evaluate(({ name, opts }) => {
      const hub = window.hub = new Wshub({ ackBatchMs: 50, ...opts });
      hub.on('*', (n) => window.reportEvent(name, n.id));
      // toasts go to localStorage: written at once, so kept even if this tab closes right after
      hub.onNotify('toast', (n) => {
        const key = `toasts:${name}`;
        localStorage.setItem(key, JSON.stringify([...JSON.parse(localStorage.getItem(key) || '[]'), n.id]));
      });
      hub.connect();
    }, { name, opts });
    await page.waitForFunction(() => window.hub.state === 'connected', null, { timeout: 10000 });
    const tab = { name, page };
    tabs.push(tab);
    return tab;
  }
  const got = (name) => seen.events.get(name) || [];
  // Every toast shown, over all tabs (read through any open tab).
  const toasts = async () => {
    const open = tabs.find((t) => !t.page.isClosed());
    return open.page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('toasts:'))
      .flatMap((k) => JSON.parse(localStorage.getItem(k))));
  };
  return { context, seen, errors, tabs, openTab, got, toasts };
}

const leaderOf = async (tabs) => {
  const flags = await Promise.all(tabs.map((t) => t.page.evaluate(() => window.hub.leader)));
  return tabs.filter((_, i) => flags[i]);
};

test('three tabs share one WebSocket; every tab gets every event; onNotify runs once', async () => {
  const h = await hub('shared-3tabs');
  const b = await newBrowserContext(h);
  const [t1, t2, t3] = [await b.openTab('t1'), await b.openTab('t2'), await b.openTab('t3')];
  assert.equal((await stats(h)).connections, 1, 'one socket for three tabs');
  assert.equal((await leaderOf(b.tabs)).length, 1, 'exactly one leader');

  // every tab knows the shared connection
  const ids = await Promise.all(b.tabs.map((t) => t.page.evaluate(() => window.hub.clientId)));
  assert.ok(ids[0] && ids.every((x) => x === ids[0]), `one clientId in every tab: ${ids}`);

  const sent = [];
  for (let i = 0; i < 20; i++) sent.push((await notifyOk(h, { type: i % 2 ? 'toast' : 'info', message: `m${i}` })).id);
  for (const t of [t1, t2, t3]) await until(`${t.name} has all 20 events`, () => b.got(t.name).length >= 20);
  await sleep(300);   // anything extra would show up now
  for (const t of [t1, t2, t3]) assert.deepEqual(b.got(t.name), sent, `${t.name} got every event once, in order`);
  const toasts = sent.filter((_, i) => i % 2);
  assert.deepEqual([...await b.toasts()].sort(), [...toasts].sort(), 'each toast shown in exactly one tab');

  assert.equal((await stats(h)).connections, 1);
  assert.deepEqual(b.errors, []);
  await b.context.close();
});

test('channel subscriptions are the union of the tabs\', dropped with the last tab', async () => {
  const h = await hub('shared-subs');
  const b = await newBrowserContext(h);
  const [t1, t2, t3] = [await b.openTab('t1'), await b.openTab('t2'), await b.openTab('t3')];
  const subscribers = async () => ((await stats(h)).top_channels.find((c) => c.channel === 'room-1') || { subscribers: 0 }).subscribers;
  await t2.page.evaluate(() => window.hub.subscribe('room-1'));
  await t3.page.evaluate(() => window.hub.subscribe('room-1'));
  assert.equal(await subscribers(), 1, 'one socket subscribed once');

  const e1 = (await notifyOk(h, { type: 'info', channel: 'room-1', message: 'r1' })).id;
  await until('t2 and t3 get the channel event', () => b.got('t2').includes(e1) && b.got('t3').includes(e1));
  assert.ok(!b.got('t1').includes(e1), 't1 did not subscribe room-1');

  // one of two tabs leaves the channel: still subscribed for the other
  await t2.page.evaluate(() => window.hub.unsubscribe('room-1'));
  assert.equal(await subscribers(), 1);
  const e2 = (await notifyOk(h, { type: 'info', channel: 'room-1', message: 'r2' })).id;
  await until('t3 gets the second channel event', () => b.got('t3').includes(e2));
  assert.ok(!b.got('t2').includes(e2), 't2 unsubscribed');
  assert.deepEqual(await t3.page.evaluate(() => window.hub.subscriptions()), ['room-1']);

  // the last subscribed tab closes (not the leader, unless it is): the socket leaves the channel
  const [lead] = await leaderOf(b.tabs);
  const other = lead === t3 ? t1 : t3;
  if (lead === t3) await other.page.evaluate(() => window.hub.subscribe('room-1'));
  await other.page.close();
  await until('room-1 dropped', async () => (await subscribers()) === 0);
  assert.equal((await stats(h)).connections, 1);
  assert.deepEqual(b.errors, []);
  await b.context.close();
});

test('closing the leader tab hands over: nothing lost, nothing twice, while events keep coming', async () => {
  const h = await hub('shared-handover');
  const b = await newBrowserContext(h);
  for (const n of ['t1', 't2', 't3']) await b.openTab(n);
  const sent = [];
  let stop = false;
  const publisher = (async () => {
    for (let i = 0; !stop; i++) {
      sent.push((await notifyOk(h, { type: 'toast', message: `p${i}` })).id);
      await sleep(10);
    }
  })();
  await until('40 events published', () => sent.length >= 40);
  const [first] = await leaderOf(b.tabs);
  await first.page.close();
  const rest = b.tabs.filter((t) => t !== first);
  await until('a new leader', async () => (await leaderOf(rest)).length === 1);
  await until('40 more events published', () => sent.length >= 80);
  // and once more: the second leader goes too, the last tab takes over
  const [second] = await leaderOf(rest);
  await second.page.close();
  const last = rest.filter((t) => t !== second);
  await until('the last tab leads', async () => (await leaderOf(last)).length === 1);
  await until('40 more events published', () => sent.length >= 120);
  stop = true;
  await publisher;
  await until('the last tab has every event', () => new Set(b.got(last[0].name)).size >= sent.length, 15000);
  await sleep(300);

  const got = b.got(last[0].name);
  const dup = [...countBy(got)].filter(([, n]) => n > 1);
  assert.deepEqual(dup, [], 'no event shown twice');
  assert.deepEqual(new Set(got), new Set(sent), 'no event lost');
  const gotSecond = b.got(second.name);
  assert.deepEqual([...countBy(gotSecond)].filter(([, n]) => n > 1), [], 'no duplicates in the second tab');
  const shown = await b.toasts();
  const toastDup = [...countBy(shown)].filter(([, n]) => n > 1);
  assert.deepEqual(toastDup, [], 'no toast shown twice over all tabs');
  const missing = sent.filter((id) => !shown.includes(id));
  assert.deepEqual(missing.map((id) => [sent.indexOf(id), [...b.seen.events].filter(([, ids]) => ids.includes(id)).map(([t]) => t)]), [], 'every toast shown once');
  await until('one connection', async () => (await stats(h)).connections === 1);
  assert.deepEqual(b.errors, []);
  await b.context.close();
});

test('a crashed leader tab is replaced: its Web Lock goes with it, another tab resumes', async () => {
  const h = await hub('shared-crash');
  const b = await newBrowserContext(h);
  for (const n of ['t1', 't2', 't3']) await b.openTab(n);
  const sent = [];
  for (let i = 0; i < 10; i++) sent.push((await notifyOk(h, { type: 'info', message: `a${i}` })).id);
  const [lead] = await leaderOf(b.tabs);
  const rest = b.tabs.filter((t) => t !== lead);
  await until('every tab has the first events', () => rest.every((t) => b.got(t.name).length >= 10));
  // The renderer dies without pagehide, bye or close frame.
  const cdp = await b.context.newCDPSession(lead.page);
  // (the crash answers nothing: do not wait for a reply)
  cdp.send('Page.crash').catch(() => {});
  await sleep(500);
  await until('a new leader', async () => (await leaderOf(rest)).length === 1);
  for (let i = 0; i < 10; i++) sent.push((await notifyOk(h, { type: 'info', message: `b${i}` })).id);
  for (const t of rest) {
    await until(`${t.name} has every event`, () => new Set(b.got(t.name)).size >= sent.length);
    assert.deepEqual(b.got(t.name), sent, `${t.name}: every event once, in order`);
  }
  await until('one connection (the dead tab\'s socket is closed)', async () => (await stats(h)).connections === 1);
  await b.context.close();
});

test('without Web Locks the tabs elect over BroadcastChannel: one socket, handover on close', async () => {
  const h = await hub('shared-nolocks');
  const b = await newBrowserContext(h);
  for (const n of ['t1', 't2', 't3']) await b.openTab(n, {}, { noLocks: true });
  assert.equal(await b.tabs[0].page.evaluate(() => !!navigator.locks), false);
  await until('one connection', async () => (await stats(h)).connections === 1);
  assert.equal((await leaderOf(b.tabs)).length, 1);
  const sent = [];
  for (let i = 0; i < 5; i++) sent.push((await notifyOk(h, { type: 'toast', message: `a${i}` })).id);
  const [lead] = await leaderOf(b.tabs);
  await lead.page.close();
  const rest = b.tabs.filter((t) => t !== lead);
  await until('a new leader', async () => (await leaderOf(rest)).length === 1);
  for (let i = 0; i < 5; i++) sent.push((await notifyOk(h, { type: 'toast', message: `b${i}` })).id);
  for (const t of rest) {
    await until(`${t.name} has every event`, () => new Set(b.got(t.name)).size >= sent.length);
    assert.deepEqual(b.got(t.name), sent, `${t.name}: every event once, in order`);
  }
  const shown = await b.toasts();
  assert.deepEqual([...shown].sort(), [...sent].sort(), 'each toast once over all tabs');
  await until('one connection', async () => (await stats(h)).connections === 1);
  assert.deepEqual(b.errors, []);
  await b.context.close();
});

test('{shared:false} opens its own socket', async () => {
  const h = await hub('shared-optout');
  const b = await newBrowserContext(h);
  await b.openTab('t1');
  await b.openTab('t2');
  assert.equal((await stats(h)).connections, 1);
  const solo = await b.openTab('solo', { shared: false });
  assert.equal((await stats(h)).connections, 2, 'the opted-out tab has its own connection');
  assert.equal(await solo.page.evaluate(() => window.hub.leader), false);
  const e = (await notifyOk(h, { type: 'toast', message: 'x' })).id;
  await until('all three tabs get it', () => ['t1', 't2', 'solo'].every((n) => b.got(n).includes(e)));
  await sleep(200);
  // the opted-out tab shows its own toast; the shared pair shows one between them
  assert.deepEqual(countBy(await b.toasts()).get(e), 2);
  assert.deepEqual(b.errors, []);
  await b.context.close();
});
