// Unit tests for static/wshub.js in a real browser, against a scripted fake WebSocket (no hub
// needed): resume positions, re-subscribe with since/epoch, dedupe, missed, acks, 4001, backoff,
// sessionStorage persistence. The page is served from a fake origin by Playwright's router.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, launchBrowser } from './lib.mjs';

const ORIGIN = 'http://wshub.test';
const CLIENT_JS = readFileSync(join(ROOT, 'static/wshub.js'), 'utf8');

// Installed before wshub.js: a WebSocket stand-in the test drives from page.evaluate.
const FAKE_WS = () => {
  window.sockets = [];
  class FakeWS {
    constructor(url) {
      this.url = url; this.readyState = 0; this.sent = [];
      window.sockets.push(this);
      setTimeout(() => { if (this.readyState === 0) { this.readyState = 1; this.onopen && this.onopen({}); } }, 0);
    }
    send(d) { if (this.readyState !== 1) throw new Error('not open'); this.sent.push(JSON.parse(d)); }
    close(code = 1000, reason = '') { this._end(code, reason); }
    // test side
    deliver(obj) { this.onmessage && this.onmessage({ data: typeof obj === 'string' ? obj : JSON.stringify(obj) }); }
    _end(code, reason) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      setTimeout(() => this.onclose && this.onclose({ code, reason }), 0);
    }
  }
  window.WebSocket = FakeWS;
  window.last = () => window.sockets[window.sockets.length - 1];
  window.waitSockets = (n, ms = 3000) => new Promise((res, rej) => {
    const t0 = Date.now();
    (function poll() {
      if (window.sockets.length >= n && window.last().readyState === 1) return res(window.last().url);
      if (Date.now() - t0 > ms) return rej(new Error(`only ${window.sockets.length} sockets`));
      setTimeout(poll, 5);
    })();
  });
};

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { if (browser) await browser.close(); });

async function newPage() {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  await page.route(`${ORIGIN}/**`, (route) => {
    const url = new URL(route.request().url());
    if (url.pathname === '/wshub.js') return route.fulfill({ contentType: 'application/javascript', body: CLIENT_JS });
    return route.fulfill({ contentType: 'text/html', body: '<!DOCTYPE html><title>t</title><script src="/wshub.js"></script>' });
  });
  await page.addInitScript(FAKE_WS);
  await page.goto(`${ORIGIN}/`);
  return { page, context, errors };
}

const ev = (id, channel, seq, extra = {}) => ({ id, type: 'test', message: id, data: {}, timestamp: '2026-11-24T10:00:00.000Z', channel, seq, epoch: 'E1', ...extra });

test('resume: since/epoch on reconnect, re-subscribe with channel position, dedupe, acks', async () => {
  const { page, context, errors } = await newPage();
  const r = await page.evaluate(async (evs) => {
    const out = {};
    const hub = new Wshub({ url: 'ws://hub.test/ws', token: 'T', ackBatchMs: 50 });
    const got = []; const states = []; const recovered = []; const missed = [];
    hub.on('*', (n) => got.push(n.id));
    hub.on('state', (s) => states.push(s));
    hub.on('recovered', (x) => recovered.push(x));
    hub.on('missed', (x) => missed.push(x));
    hub.connect();
    out.url1 = await waitSockets(1);
    let ws = last();
    ws.deliver({ type: 'hub:connected', client_id: 'c1', user: 'u', role: null, roles: [], channels: ['broadcast', 'user:u'], epoch: 'E1', seq: 10 });
    const sub = hub.subscribe('room-1');
    await new Promise((r) => setTimeout(r, 10));
    out.subFrame = ws.sent.find((f) => f.type === 'subscribe');
    ws.deliver({ type: 'hub:subscribed', channel: 'room-1', epoch: 'E1', seq: 9 });
    out.subResolved = (await sub).type;
    ws.deliver(evs.b11);
    ws.deliver(evs.u12);
    ws.deliver(JSON.stringify(evs.r13) + '\n' + JSON.stringify(evs.b14));  // two frames joined by \n
    await new Promise((r) => setTimeout(r, 120));                          // acks flushed
    out.acks = ws.sent.filter((f) => f.type === 'ack').flatMap((f) => f.ids);
    // the hub goes away
    ws._end(1001, 'server shutting down');
    await new Promise((r) => setTimeout(r, 5));
    out.stateAfterClose = hub.state;
    out.url2 = await waitSockets(2, 2000);
    ws = last();
    ws.deliver({ type: 'hub:connected', client_id: 'c2', user: 'u', roles: [], channels: ['broadcast', 'user:u'], epoch: 'E1', seq: 20, recovered: true, replayed: 2 });
    await new Promise((r) => setTimeout(r, 10));
    out.resub = ws.sent.find((f) => f.type === 'subscribe');
    ws.deliver(evs.u15dupOfR13);   // same id as r13, replayed through user:u
    ws.deliver(evs.b16);
    ws.deliver({ type: 'hub:subscribed', channel: 'room-1', epoch: 'E1', seq: 17, recovered: true, replayed: 1 });
    ws.deliver(evs.r17);
    await new Promise((r) => setTimeout(r, 120));
    out.acks2 = ws.sent.filter((f) => f.type === 'ack').flatMap((f) => f.ids);
    out.pos = JSON.parse(JSON.stringify(hub._pos));
    out.got = got; out.states = states; out.recovered = recovered; out.missed = missed;
    out.clientId = hub.clientId;
    return out;
  }, {
    b11: ev('b11', 'broadcast', 11), u12: ev('u12', 'user:u', 12), r13: ev('r13', 'room-1', 13),
    b14: ev('b14', 'broadcast', 14), u15dupOfR13: ev('r13', 'user:u', 15), b16: ev('b16', 'broadcast', 16),
    r17: ev('r17', 'room-1', 17),
  });
  assert.equal(r.url1, 'ws://hub.test/ws?token=T');
  assert.deepEqual(r.subFrame, { type: 'subscribe', channel: 'room-1' });
  assert.equal(r.subResolved, 'hub:subscribed');
  assert.deepEqual(r.acks, ['b11', 'u12', 'r13', 'b14']);
  assert.equal(r.stateAfterClose, 'reconnecting');
  assert.equal(r.url2, 'ws://hub.test/ws?token=T&epoch=E1&since=14');
  assert.deepEqual(r.resub, { type: 'subscribe', channel: 'room-1', since: 13, epoch: 'E1' });
  assert.deepEqual(r.got, ['b11', 'u12', 'r13', 'b14', 'b16', 'r17'], 'r13 replayed via user:u is dropped');
  assert.deepEqual(r.acks2, ['b16', 'r17']);
  assert.deepEqual(r.pos, { auto: { seq: 20, epoch: 'E1' }, chans: { 'room-1': { seq: 17, epoch: 'E1' } } });
  assert.deepEqual(r.states, ['connecting', 'connected', 'reconnecting', 'connected']);
  assert.deepEqual(r.missed, []);
  assert.deepEqual(r.recovered.map((x) => [x.stream, x.recovered, x.replayed]), [['auto', true, 2], ['room-1', true, 1]]);
  assert.equal(r.clientId, 'c2');
  assert.deepEqual(errors, []);
  await context.close();
});

test('missed: recovered:false on hub:connected and hub:subscribed; positions restart at the new epoch', async () => {
  const { page, context, errors } = await newPage();
  const r = await page.evaluate(async () => {
    const hub = new Wshub({ url: 'ws://hub.test/ws' });
    const missed = [];
    hub.on('missed', (m) => missed.push(m));
    hub.connect();
    await waitSockets(1);
    let ws = last();
    ws.deliver({ type: 'hub:connected', client_id: 'a', channels: ['broadcast'], epoch: 'E1', seq: 5 });
    hub.subscribe('room-m');
    ws.deliver({ type: 'hub:subscribed', channel: 'room-m', epoch: 'E1', seq: 3 });
    ws._end(1006, '');
    await waitSockets(2, 2000);
    const url2 = last().url;
    ws = last();
    ws.deliver({ type: 'hub:connected', client_id: 'b', channels: ['broadcast'], epoch: 'E2', seq: 0, recovered: false, replayed: 0 });
    await new Promise((r) => setTimeout(r, 5));
    const resub = ws.sent.find((f) => f.type === 'subscribe');
    ws.deliver({ type: 'hub:subscribed', channel: 'room-m', epoch: 'E2', seq: 0, recovered: false, replayed: 0 });
    return { url2, resub, missed, pos: JSON.parse(JSON.stringify(hub._pos)) };
  });
  assert.equal(r.url2, 'ws://hub.test/ws?epoch=E1&since=5');
  assert.deepEqual(r.resub, { type: 'subscribe', channel: 'room-m', since: 3, epoch: 'E1' });
  assert.deepEqual(r.missed.map((m) => m.stream), ['auto', 'room-m']);
  assert.deepEqual(r.pos, { auto: { seq: 0, epoch: 'E2' }, chans: { 'room-m': { seq: 0, epoch: 'E2' } } });
  assert.deepEqual(errors, []);
  await context.close();
});

test('subscribe/unsubscribe/publish promises settle on the matching answers', async () => {
  const { page, context, errors } = await newPage();
  const r = await page.evaluate(async () => {
    const hub = new Wshub({ url: 'ws://hub.test/ws' });
    const errs = [];
    hub.on('error', (e) => errs.push(e.code));
    const early = hub.subscribe('a');            // before connecting: sent after hub:connected
    hub.connect();
    await waitSockets(1);
    const ws = last();
    ws.deliver({ type: 'hub:connected', client_id: 'x', channels: ['broadcast'], epoch: 'E', seq: 0 });
    const bad = hub.subscribe('no good');
    ws.deliver({ type: 'hub:subscribed', channel: 'a', epoch: 'E', seq: 0 });
    ws.deliver({ type: 'hub:error', code: 'bad_channel', message: 'bad', channel: 'no good' });
    const out = { early: (await early).channel, bad: await bad.then(() => 'ok', (e) => e.code) };
    out.subs = hub.subscriptions();
    const un = hub.unsubscribe('a');
    ws.deliver({ type: 'hub:unsubscribed', channel: 'a' });
    out.un = (await un).type;
    const pub = hub.publish('a', 'chat', { t: 1 });
    const pub2 = hub.publish('b', 'chat', {});
    ws.deliver({ type: 'hub:published', channel: 'a', id: 'P1' });
    ws.deliver({ type: 'hub:error', code: 'publish_forbidden', message: 'no', channel: 'b' });
    out.pub = (await pub).id;
    out.pub2 = await pub2.then(() => 'ok', (e) => e.code);
    out.pubFrame = ws.sent.find((f) => f.type === 'publish');
    out.errs = errs;
    out.subsAfter = hub.subscriptions();
    return out;
  });
  assert.equal(r.early, 'a');
  assert.equal(r.bad, 'bad_channel');
  assert.deepEqual(r.subs, ['a'], 'a refused channel is not kept');
  assert.equal(r.un, 'hub:unsubscribed');
  assert.equal(r.pub, 'P1');
  assert.equal(r.pub2, 'publish_forbidden');
  assert.deepEqual(r.pubFrame, { type: 'publish', channel: 'a', event: 'chat', data: { t: 1 } });
  assert.deepEqual(r.errs, ['bad_channel', 'publish_forbidden']);
  assert.deepEqual(r.subsAfter, []);
  assert.deepEqual(errors, []);
  await context.close();
});

test('acks are split into frames under 512 bytes', async () => {
  const { page, context } = await newPage();
  const frames = await page.evaluate(async () => {
    const hub = new Wshub({ url: 'ws://hub.test/ws', ackBatchMs: 30 });
    hub.connect();
    await waitSockets(1);
    const ws = last();
    ws.deliver({ type: 'hub:connected', client_id: 'x', channels: ['broadcast'], epoch: 'E', seq: 0 });
    for (let i = 1; i <= 100; i++) ws.deliver({ id: '01JD' + String(i).padStart(22, '0'), type: 't', channel: 'broadcast', seq: i, epoch: 'E' });
    await new Promise((r) => setTimeout(r, 100));
    return ws.sent.filter((f) => f.type === 'ack');
  });
  const ids = frames.flatMap((f) => f.ids);
  assert.equal(ids.length, 100);
  assert.equal(new Set(ids).size, 100);
  assert.ok(frames.length > 1);
  for (const f of frames) assert.ok(JSON.stringify(f).length <= 512, `${JSON.stringify(f).length} bytes`);
  await context.close();
});

test('4001: getToken asked once more, then closed with an unauthorized error; static token stops at once', async () => {
  const { page, context } = await newPage();
  const r = await page.evaluate(async () => {
    let calls = 0;
    const hub = new Wshub({ url: 'ws://hub.test/ws', getToken: async () => `tok${++calls}` });
    const errs = []; const states = [];
    hub.on('error', (e) => errs.push(e.code));
    hub.on('state', (s) => states.push(s));
    hub.connect();
    await waitSockets(1);
    const u1 = last().url;
    last()._end(4001, 'unauthorized');
    await waitSockets(2, 1000);
    const u2 = last().url;
    last()._end(4001, 'unauthorized');
    await new Promise((r) => setTimeout(r, 700));
    const h2 = new Wshub({ url: 'ws://hub.test/ws', token: 'static' });
    const errs2 = [];
    h2.on('error', (e) => errs2.push(e.code));
    h2.connect();
    await waitSockets(3);
    last()._end(4001, '');
    await new Promise((r) => setTimeout(r, 700));
    return { calls, u1, u2, errs, states, state: hub.state, sockets: sockets.length, errs2, state2: h2.state };
  });
  assert.equal(r.calls, 2);
  assert.equal(r.u1, 'ws://hub.test/ws?token=tok1');
  assert.equal(r.u2, 'ws://hub.test/ws?token=tok2');
  assert.deepEqual(r.errs, ['unauthorized']);
  assert.equal(r.state, 'closed');
  assert.equal(r.sockets, 3, 'no reconnect after giving up');
  assert.deepEqual(r.errs2, ['unauthorized']);
  assert.equal(r.state2, 'closed');
  await context.close();
});

test('backoff: exponential with full jitter, capped; reset after a stable connection', async () => {
  const { page, context } = await newPage();
  const r = await page.evaluate(async () => {
    Math.random = () => 0.999;                        // worst case of the jitter
    const hub = new Wshub({ url: 'ws://hub.test/ws', backoffBaseMs: 40, backoffCapMs: 200, stableMs: 100 });
    hub.connect();
    const times = [];
    for (let i = 1; i <= 6; i++) {
      await waitSockets(i, 2000);
      times.push(performance.now());
      last()._end(1006, '');
    }
    const gaps = times.slice(1).map((t, i) => Math.round(t - times[i]));
    // a connection that stays up for stableMs resets the backoff to the base
    await waitSockets(7, 2000);
    last().deliver({ type: 'hub:connected', client_id: 'x', channels: ['broadcast'], epoch: 'E', seq: 0 });
    await new Promise((r) => setTimeout(r, 150));
    const t0 = performance.now();
    last()._end(1006, '');
    await waitSockets(8, 2000);
    gaps.push(Math.round(performance.now() - t0));
    hub.close();
    return gaps;
  });
  // ~40, 80, 160, 200, 200 (plus timer slack), then 40 again after the stable connection
  const want = [40, 80, 160, 200, 200, 40];
  r.forEach((g, i) => assert.ok(g >= want[i] * 0.9 && g < want[i] + 80, `gap ${i}: ${g} ms, want ~${want[i]}`));
  await context.close();
});

test("persist:'session' resumes after a page reload", async () => {
  const { page, context } = await newPage();
  await page.evaluate(async () => {
    const hub = new Wshub({ url: 'ws://hub.test/ws', persist: 'session' });
    hub.connect();
    await waitSockets(1);
    const ws = last();
    ws.deliver({ type: 'hub:connected', client_id: 'x', channels: ['broadcast'], epoch: 'E9', seq: 3 });
    hub.subscribe('room-p');
    ws.deliver({ type: 'hub:subscribed', channel: 'room-p', epoch: 'E9', seq: 2 });
    ws.deliver({ id: 'A', type: 't', channel: 'broadcast', seq: 4, epoch: 'E9' });
    ws.deliver({ id: 'B', type: 't', channel: 'room-p', seq: 5, epoch: 'E9' });
    await new Promise((r) => setTimeout(r, 400));    // saved (throttled)
  });
  await page.reload();
  const r = await page.evaluate(async () => {
    const hub = new Wshub({ url: 'ws://hub.test/ws', persist: 'session' });
    const got = [];
    hub.on('*', (n) => got.push(n.id));
    hub.subscribe('room-p');
    hub.connect();
    await waitSockets(1);
    const ws = last();
    ws.deliver({ type: 'hub:connected', client_id: 'y', channels: ['broadcast'], epoch: 'E9', seq: 5, recovered: true, replayed: 0 });
    await new Promise((r) => setTimeout(r, 10));
    ws.deliver({ id: 'B', type: 't', channel: 'broadcast', seq: 5, epoch: 'E9' });   // seen before the reload
    return { url: ws.url, sub: ws.sent.find((f) => f.type === 'subscribe'), got };
  });
  assert.equal(r.url, 'ws://hub.test/ws?epoch=E9&since=4');
  assert.deepEqual(r.sub, { type: 'subscribe', channel: 'room-p', since: 5, epoch: 'E9' });
  assert.deepEqual(r.got, [], 'dedupe window survives the reload');
  await context.close();
});
