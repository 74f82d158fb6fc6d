// Test harness: a pinned nats-server and a natsmud of the test run's own, on free ports,
// and Debian's chromium driven by playwright-core. Everything started here is stopped by
// `stop()`, and killed on process exit as a last resort.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '../..');
export const SCREENSHOTS = path.join(ROOT, 'docs/screenshots');

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-sync',
  '--disable-quic',
];

const children = new Set();
process.on('exit', () => {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

function natsServerBin() {
  if (process.env.NATSMUD_NATS_SERVER) return process.env.NATSMUD_NATS_SERVER;
  const out = execFileSync(path.join(ROOT, 'scripts/install-nats-server'), {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return out.trim().split('\n').pop();
}

function natsmudBin() {
  const bin = process.env.NATSMUD_BIN || path.join(ROOT, 'target/debug/natsmud');
  if (!fs.existsSync(bin)) {
    throw new Error(`no natsmud binary at ${bin}: run cargo build -p natsmud (or set NATSMUD_BIN)`);
  }
  return bin;
}

/** A port that was free a moment ago: listen on port 0, read it, close. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitFor(what, check, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

function startProcess(bin, args, logFile) {
  const log = fs.openSync(logFile, 'a');
  const child = spawn(bin, args, { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  children.add(child);
  child.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    });
    child.once('error', (error) => {
      children.delete(child);
      resolve({ code: null, signal: null, error });
    });
  });
  return child;
}

async function stopProcess(child, timeoutMs = 5000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const done = await Promise.race([child.exited, sleep(timeoutMs).then(() => null)]);
  if (!done) {
    child.kill('SIGKILL');
    await child.exited;
  }
}

function tail(file, lines = 40) {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** nats-server + natsmud + chromium. */
export class Stack {
  constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natsmud-browser-'));
    this.natsLog = path.join(this.dir, 'nats-server.log');
    this.serverLog = path.join(this.dir, 'natsmud.log');
    this.nats = null;
    this.server = null;
    this.browser = null;
    this.natsUrl = '';
    this.port = 0;
  }

  get baseUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    await this.startNats();
    this.port = await freePort();
    await this.startServer();
    this.browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
    });
  }

  async startNats() {
    const natsDir = path.join(this.dir, 'nats');
    fs.mkdirSync(natsDir);
    this.nats = startProcess(
      natsServerBin(),
      // JetStream holds presence; its storage stays inside the test's own folder.
      ['-a', '127.0.0.1', '-p', '-1', '-js', '-sd', path.join(natsDir, 'js'), '--ports_file_dir', natsDir],
      this.natsLog,
    );
    const portsFile = path.join(natsDir, `nats-server_${this.nats.pid}.ports`);
    this.natsUrl = await waitFor('nats-server to write its ports file', () => {
      if (this.nats.exitCode !== null) {
        throw new Error(`nats-server exited early:\n${tail(this.natsLog)}`);
      }
      try {
        const ports = JSON.parse(fs.readFileSync(portsFile, 'utf8'));
        return ports.nats && ports.nats[0];
      } catch {
        return null;
      }
    }, 15000);
  }

  async startServer() {
    const dataDir = path.join(this.dir, 'data');
    fs.mkdirSync(dataDir, { recursive: true });
    this.server = startProcess(natsmudBin(), [
      '--bind', `127.0.0.1:${this.port}`,
      // Browser tests need no telnet, and must not fight over its default port.
      '--telnet-bind', '0',
      '--nats-url', this.natsUrl,
      '--data-dir', dataDir,
      '--jwt-secret', 'test-secret',
      // Limits suit a public server; these tests log in many times from one address.
      '--auth-per-minute', '0',
      '--commands-per-sec', '0',
      '--password-hash-memory-kib', '1024',
      '--password-hash-iterations', '1',
    ], this.serverLog);
    const server = this.server;
    await waitFor('natsmud to answer GET /health', async () => {
      if (server.exitCode !== null) {
        throw new Error(`natsmud exited early:\n${tail(this.serverLog)}`);
      }
      try {
        const response = await fetch(`${this.baseUrl}/health`);
        return response.ok;
      } catch {
        return false;
      }
    }, 30000);
  }

  /** Stops natsmud (SIGTERM) and waits until it has exited. */
  async stopServer() {
    await stopProcess(this.server);
    this.server = null;
  }

  async stop() {
    if (this.browser) {
      await this.browser.close().catch(() => {});
      this.browser = null;
    }
    await stopProcess(this.server);
    await stopProcess(this.nats);
    this.server = null;
    this.nats = null;
    if (!process.env.NATSMUD_KEEP_LOGS) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  logs() {
    return `--- natsmud log (${this.serverLog}) ---\n${tail(this.serverLog)}`;
  }

  /** A fresh browser context and page, with page errors and dialogs recorded. */
  async newPage(viewport = { width: 1280, height: 800 }) {
    const context = await this.browser.newContext({ viewport, deviceScaleFactor: 1 });
    const page = await context.newPage();
    page.problems = [];
    page.dialogs = [];
    page.on('pageerror', (error) => page.problems.push(`page error: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error') page.problems.push(`console error: ${message.text()}`);
    });
    page.on('dialog', (dialog) => {
      page.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
      dialog.dismiss().catch(() => {});
    });
    return page;
  }

  async api(pathname, body) {
    const response = await fetch(`${this.baseUrl}${pathname}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    return { status: response.status, body: await response.json().catch(() => null) };
  }
}

/** A unique, valid player name: `prefix` plus random digits (3–20 chars). */
export function uniqueName(prefix) {
  return `${prefix}${Math.floor(Math.random() * 1e6).toString().padStart(6, '0')}`;
}

// ------------------------------------------------------------------ page helpers

const WAIT_MS = 10000;

/** The output pane's last lines, for failure messages. */
export async function outputTail(page, lines = 15) {
  return page.evaluate((n) => [...document.querySelectorAll('#output .line .body')]
    .slice(-n).map((b) => `  | ${b.textContent}`).join('\n'), lines).catch(() => '(page gone)');
}

/** Waits until a line of the output pane contains `text` (plain substring match). */
export async function waitForOutput(page, text, timeout = WAIT_MS) {
  try {
    await page.waitForFunction(
      (t) => [...document.querySelectorAll('#output .line .body')].some((b) => b.textContent.includes(t)),
      text,
      { timeout },
    );
  } catch (error) {
    throw new Error(`the output never showed ${JSON.stringify(text)}; its last lines:\n${await outputTail(page)}\n(${error.message.split('\n')[0]})`);
  }
}

export async function countOutput(page, text) {
  return page.evaluate(
    (t) => [...document.querySelectorAll('#output .line .body')].filter((b) => b.textContent.includes(t)).length,
    text,
  );
}

export async function occupants(page) {
  return page.$$eval('#occupants li[data-name]', (items) => items.map((i) => i.dataset.name));
}

export async function waitForOccupants(page, predicate, what, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const names = await occupants(page);
    if (predicate(names)) return names;
    if (Date.now() > deadline) throw new Error(`occupants never ${what}; they are ${JSON.stringify(names)}`);
    await sleep(50);
  }
}

export async function roomId(page) {
  return page.$eval('#room-panel', (panel) => panel.dataset.roomId || '');
}

export async function waitForStatus(page, state, timeout = WAIT_MS) {
  try {
    await page.waitForSelector(`#status[data-state="${state}"]`, { timeout });
  } catch (error) {
    const now = await page.$eval('#status', (s) => `${s.dataset.state} (${s.textContent.trim()})`).catch(() => '?');
    throw new Error(`status never became ${state}; it is ${now}\n${await outputTail(page)}`);
  }
}

/** Fills in the form in `mode` (login / register) and waits for the game screen. */
export async function signIn(page, baseUrl, mode, name, password, query = '') {
  await page.goto(`${baseUrl}/${query}`);
  await page.click(mode === 'register' ? '#tab-register' : '#tab-login');
  await page.fill('#username', name);
  await page.fill('#password', password);
  await page.click('#auth-submit');
  await page.waitForSelector('#game-screen:not([hidden])', { timeout: WAIT_MS });
  await waitForStatus(page, 'connected');
  await page.waitForFunction(() => !!document.querySelector('#room-panel').dataset.roomId, null, { timeout: WAIT_MS });
}

export async function typeCommand(page, line) {
  await page.fill('#command', line);
  await page.press('#command', 'Enter');
}
