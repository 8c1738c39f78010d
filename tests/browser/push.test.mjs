// The Web Push service worker (static/wshub-sw.js) in headless Chromium: a push event (delivered
// through the DevTools protocol, as a push service would) shows a notification with the title,
// body and tag sent to /notify; a second push with the same tag replaces the first. The
// encryption and VAPID side is tested against a stand-in push service in tests/push.rs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startHub, stopHub, launchBrowser, sleep } from './lib.mjs';

let browser;
let hub;
before(async () => { browser = await launchBrowser(); hub = await startHub({ name: 'push-sw' }); });
after(async () => { if (browser) await browser.close(); await stopHub(hub).catch(() => {}); });

test('the service worker shows a push as a notification; a later one with the same tag replaces it', async () => {
  const sw = await fetch(`${hub.base}/wshub-sw.js`);
  assert.equal(sw.status, 200);
  assert.match(sw.headers.get('content-type') || '', /javascript/);

  const context = await browser.newContext();
  await context.grantPermissions(['notifications'], { origin: hub.base });
  const page = await context.newPage();
  await page.goto(`${hub.base}/health`);
  await page.evaluate(async () => {
    await navigator.serviceWorker.register('/wshub-sw.js');
    await navigator.serviceWorker.ready;
  });
  const cdp = await context.newCDPSession(page);
  const registrations = [];
  cdp.on('ServiceWorker.workerRegistrationUpdated', (e) => registrations.push(...e.registrations));
  await cdp.send('ServiceWorker.enable');
  const deadline = Date.now() + 5000;
  while (!registrations.find((r) => !r.isDeleted) && Date.now() < deadline) await sleep(20);
  const reg = registrations.find((r) => !r.isDeleted);
  assert.ok(reg, 'service worker registered');

  const push = async (payload) => cdp.send('ServiceWorker.deliverPushMessage', {
    origin: hub.base, registrationId: reg.registrationId, data: JSON.stringify(payload),
  });
  const shown = () => page.evaluate(async () => {
    const r = await navigator.serviceWorker.ready;
    return (await r.getNotifications()).map((n) => ({ title: n.title, body: n.body, tag: n.tag, url: n.data && n.data.url }));
  });
  const waitShown = async (pred) => {
    const until = Date.now() + 5000;
    for (;;) {
      const list = await shown();
      if (pred(list)) return list;
      if (Date.now() > until) throw new Error(`notifications: ${JSON.stringify(list)}`);
      await sleep(50);
    }
  };

  await push({ id: 'e1', type: 'booking', title: 'New booking', body: 'Table for 2', url: '/bookings/7', tag: 'booking-7' });
  let list = await waitShown((l) => l.length === 1);
  assert.deepEqual(list, [{ title: 'New booking', body: 'Table for 2', tag: 'booking-7', url: '/bookings/7' }]);

  await push({ id: 'e2', type: 'booking', title: 'Booking changed', body: 'Table for 4', url: '/bookings/7', tag: 'booking-7' });
  list = await waitShown((l) => l.length === 1 && l[0].title === 'Booking changed');
  assert.equal(list[0].body, 'Table for 4', 'the same tag replaced the first notification');

  await push({ id: 'e3', type: 'chat', title: 'Message', body: 'hi', url: '/chat' });
  list = await waitShown((l) => l.length === 2);
  assert.deepEqual(list.map((n) => n.title).sort(), ['Booking changed', 'Message']);
  await context.close();
});
