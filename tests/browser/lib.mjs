// Helpers for the browser tests: start/stop the wshub binary, talk HTTP to it, launch chromium.
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdirSync, mkdtempSync, openSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

process.env.PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD = '1';
const { chromium } = await import('playwright-core');

const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, '../..');
export const ARTIFACTS = join(ROOT, 'target/browser-artifacts');
export const HUB_BIN = resolve(HERE, process.env.WSHUB_BIN || '../../target/debug/wshub');
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
mkdirSync(ARTIFACTS, { recursive: true });

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => res(port)); });
  });
}

let helpText;
/** Whether the hub binary advertises a command-line flag (so a missing feature fails clearly). */
export function hubSupports(flag) {
  if (helpText === undefined) {
    if (!existsSync(HUB_BIN)) throw new Error(`hub binary ${HUB_BIN} not found: run \`cargo build\` first or set WSHUB_BIN`);
    const r = spawnSync(HUB_BIN, ['--help'], { encoding: 'utf8', timeout: 10000 });
    helpText = `${r.stdout}\n${r.stderr}`;
  }
  return new RegExp(`(^|\\s)${flag.replace(/[-]/g, '\\-')}(\\s|=|,|$)`, 'm').test(helpText);
}

export function tempDir(prefix = 'wshub-browser-') { return mkdtempSync(join(tmpdir(), prefix)); }

/**
 * Start the hub: `wshub --addr 127.0.0.1:<port> [--data-dir D] [--dev --jwt-secret S] [extra…]`; wait for
 * GET /health to answer 200. Output goes to target/browser-artifacts/hub-<name>.log.
 */
export async function startHub({ port, dataDir, dev = false, extra = [], name = 'hub' } = {}) {
  port = port || await freePort();
  const args = ['--addr', `127.0.0.1:${port}`];
  if (dataDir) args.push('--data-dir', dataDir);
  // POST /dev/token needs --dev, a JWT secret and a loopback address
  if (dev) args.push('--dev', '--jwt-secret', 'browser-test-secret-0123456789abcdef');
  args.push(...extra);
  const logFile = join(ARTIFACTS, `hub-${name}.log`);
  const out = openSync(logFile, 'a');
  const proc = spawn(HUB_BIN, args, { stdio: ['ignore', out, out], env: { RUST_LOG: 'info', ...process.env } });
  let exited = null;
  proc.on('exit', (code, sig) => { exited = { code, sig }; });
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 15000;
  for (;;) {
    if (exited) throw new Error(`wshub ${args.join(' ')} exited early (${JSON.stringify(exited)}); see ${logFile}`);
    try {
      const r = await fetch(`${base}/health`);
      if (r.ok) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) { proc.kill('SIGKILL'); throw new Error(`wshub did not answer /health on ${base}; see ${logFile}`); }
    await sleep(50);
  }
  return { proc, port, base, args, logFile, exited: () => exited };
}

/** Stop a hub gracefully (SIGTERM: it closes sockets with 1001), SIGKILL after 5 s. */
export async function stopHub(hub) {
  if (!hub || hub.exited()) return;
  const done = new Promise((r) => hub.proc.once('exit', r));
  hub.proc.kill('SIGTERM');
  const t = setTimeout(() => hub.proc.kill('SIGKILL'), 5000);
  await done;
  clearTimeout(t);
}

/** POST /notify with a JSON body; resolves to {status, body}. */
export async function notify(hub, body) {
  const r = await fetch(`${hub.base}/notify`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  const text = await r.text();
  let json; try { json = JSON.parse(text); } catch { json = text; }
  return { status: r.status, body: json };
}

/** POST /notify and insist on 200 with an id. */
export async function notifyOk(hub, body) {
  const r = await notify(hub, body);
  if (r.status !== 200 || !r.body || !r.body.id) throw new Error(`POST /notify ${JSON.stringify(body)} → ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

export function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} missing: apt-get update && apt-get install -y chromium`);
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
      '--disable-quic', '--disable-component-update', '--disable-sync'],
  });
}

/**
 * Open a page and collect its console errors and uncaught exceptions. Chromium's own
 * "WebSocket connection … failed" lines are expected while a hub restarts: pass allowWsErrors.
 */
export async function openPage(browser, url, { allowWsErrors = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = m.text();
    if (allowWsErrors && /WebSocket connection to .* failed/.test(text)) return;
    errors.push(`console: ${text}`);
  });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  await page.goto(url);
  return { page, context, errors };
}

export async function waitState(page, state, timeout = 10000) {
  await page.waitForFunction((s) => document.querySelector('#state')?.dataset.state === s, state, { timeout });
}

/** ids of the .event items in the page's list, newest first. */
export function eventIds(page) {
  return page.$$eval('#events li.event', (els) => els.map((e) => e.dataset.id));
}

export function countBy(list) {
  const m = new Map();
  for (const x of list) m.set(x, (m.get(x) || 0) + 1);
  return m;
}
