// The README's browser snippet works as pasted: the ```html block after the README-snippet marker
// is served as a page from another origin (as an app would serve it), pointed at a real hub (only
// `localhost:8080` is replaced by the test hub's address), and must receive a published event
// without a console error.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { ROOT, startHub, stopHub, notifyOk, launchBrowser } from './lib.mjs';

let browser;
let hub;
before(async () => { browser = await launchBrowser(); hub = await startHub({ name: 'readme' }); });
after(async () => {
  if (browser) await browser.close();
  if (hub) await stopHub(hub);
});

function readmeSnippet() {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const match = readme.match(/<!-- README-snippet[^\n]*-->\n```html\n([\s\S]*?)```/);
  assert.ok(match, 'README.md has the marked ```html snippet');
  return match[1];
}

test('README browser snippet, pasted into a page on another origin, receives an event', async () => {
  const snippet = readmeSnippet().replaceAll('localhost:8080', `127.0.0.1:${hub.port}`);
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  const logs = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => (m.type() === 'error' ? errors : logs).push(m.text()));
  // The app's own server: another origin on this machine, as a dev server would be.
  const app = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(`<!DOCTYPE html><title>app</title>\n${snippet}`);
  });
  await new Promise((r) => app.listen(0, '127.0.0.1', r));
  await page.goto(`http://127.0.0.1:${app.address().port}/`);
  // Subscribed once the hub lists the page's connection in service:12.
  const deadline = Date.now() + 10000;
  for (;;) {
    const r = await fetch(`${hub.base}/channels`);
    const body = await r.json();
    if (body.channels.some((c) => c.channel === 'service:12')) break;
    assert.ok(Date.now() < deadline, `the snippet never subscribed: ${JSON.stringify(body)} ${errors}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  await notifyOk(hub, { type: 'reserva_creada', message: 'Nueva reserva', channel: 'service:12' });
  const until = Date.now() + 5000;
  while (!logs.includes('reserva_creada: Nueva reserva') && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  assert.ok(logs.includes('reserva_creada: Nueva reserva'), `console: ${JSON.stringify(logs)}`);
  assert.deepEqual(errors, []);
  await context.close();
  app.close();
});
