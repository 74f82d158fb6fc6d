// Browser tests of the web client served by natsmud at GET /: two (or more) players in
// real chromium pages, against a real natsmud and nats-server of this run's own.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  SCREENSHOTS, Stack, countOutput, occupants, outputTail, roomId, signIn, typeCommand,
  uniqueName, waitForOccupants, waitForOutput, waitForStatus,
} from './harness.mjs';

const PASSWORD = 'correct horse battery';
const XSS = '<img src=x onerror=alert(1)>';
const TEST_TIMEOUT = 90000;

describe('natsmud web client', { concurrency: 1 }, () => {
  const stack = new Stack();
  const pages = [];
  let a; // { page, name }
  let b;

  before(async () => {
    await stack.start();
  }, { timeout: 120000 });

  after(async () => {
    for (const page of pages) {
      const problems = page.problems.filter((p) => !/WebSocket|Failed to load resource|EventSource/i.test(p));
      if (problems.length) console.error(`problems seen in a page:\n  ${problems.join('\n  ')}`);
    }
    await stack.stop();
  });

  /** Runs `body`, adding the server's log to a failure. */
  async function withLogs(body) {
    try {
      await body();
    } catch (error) {
      error.message += `\n${stack.logs()}`;
      throw error;
    }
  }

  async function newPage(viewport) {
    const page = await stack.newPage(viewport);
    pages.push(page);
    return page;
  }

  it('shows the server\'s own error messages on the sign-in form', { timeout: TEST_TIMEOUT }, () => withLogs(async () => {
    const name = uniqueName('Taken');
    const first = await stack.api('/api/auth/register', { username: name, password: PASSWORD });
    assert.equal(first.status, 201, JSON.stringify(first.body));

    const page = await newPage();
    await page.goto(`${stack.baseUrl}/`);
    await page.waitForSelector('#auth-screen:not([hidden])');
    assert.equal(await page.isHidden('#game-screen'), true);

    // A taken name: the message is the server's.
    const again = await stack.api('/api/auth/register', { username: name, password: PASSWORD });
    assert.equal(again.status, 409);
    await page.click('#tab-register');
    await page.fill('#username', name);
    await page.fill('#password', PASSWORD);
    await page.click('#auth-submit');
    await page.waitForSelector('#auth-error:not([hidden])');
    assert.equal((await page.textContent('#auth-error')).trim(), again.body.error.message);

    // A wrong password.
    const wrong = await stack.api('/api/auth/login', { username: name, password: 'not the password' });
    assert.equal(wrong.status, 401);
    await page.click('#tab-login');
    await page.fill('#username', name);
    await page.fill('#password', 'not the password');
    await page.click('#auth-submit');
    await page.waitForSelector('#auth-error:not([hidden])');
    assert.equal((await page.textContent('#auth-error')).trim(), wrong.body.error.message);
    assert.equal(await page.isHidden('#game-screen'), true);

    // A stored token the server refuses leads back to the form, with a reason.
    await page.evaluate(() => sessionStorage.setItem('natsmud.session',
      JSON.stringify({ token: 'not-a-token', player_id: 'x', player_name: 'Ghost' })));
    await page.reload();
    await page.waitForSelector('#auth-screen:not([hidden]) #auth-error:not([hidden])');
    assert.match(await page.textContent('#auth-error'), /session has ended/);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('natsmud.session')), null);
    await page.context().close();
  }));

  it('moves, announces, chats and escapes text between two players', { timeout: TEST_TIMEOUT }, () => withLogs(async () => {
    a = { page: await newPage(), name: uniqueName('Ann') };
    b = { page: await newPage(), name: uniqueName('Bo') };
    await signIn(a.page, stack.baseUrl, 'register', a.name, PASSWORD);
    await signIn(b.page, stack.baseUrl, 'register', b.name, PASSWORD);
    await waitForOutput(a.page, `Welcome, ${a.name}`);

    // Both start in the start room and see each other.
    const start = await roomId(a.page);
    assert.equal(await roomId(b.page), start);
    const startName = (await a.page.textContent('#room-name')).trim();
    assert.ok(startName.length > 0);
    await waitForOccupants(a.page, (n) => n.includes(a.name) && n.includes(b.name), `listed ${a.name} and ${b.name} for A`);
    await waitForOccupants(b.page, (n) => n.includes(a.name) && n.includes(b.name), `listed ${a.name} and ${b.name} for B`);
    await waitForOutput(a.page, `${b.name} has entered the game.`);

    // A walks out through the first exit button…
    const exit = a.page.locator('#exits button[data-dir]:not([disabled])').first();
    const dir = await exit.getAttribute('data-dir');
    const target = await exit.getAttribute('data-to');
    await exit.click();
    await a.page.waitForFunction((id) => document.querySelector('#room-panel').dataset.roomId === id, target);
    assert.notEqual((await a.page.textContent('#room-name')).trim(), '…');
    await waitForOutput(a.page, `go ${dir}`);
    await waitForOutput(b.page, `${a.name} leaves the room.`);
    await waitForOccupants(b.page, (n) => !n.includes(a.name) && n.includes(b.name), `dropped ${a.name} for B`);
    await waitForOccupants(a.page, (n) => n.includes(a.name) && !n.includes(b.name), `showed A's new room`);

    // …and back through the exit that leads to the start room.
    const back = a.page.locator(`#exits button[data-to="${start}"]`).first();
    assert.equal(await back.count(), 1, `no exit back to ${start} from ${target}`);
    await back.click();
    await a.page.waitForFunction((id) => document.querySelector('#room-panel').dataset.roomId === id, start);
    assert.equal((await a.page.textContent('#room-name')).trim(), startName);
    await waitForOutput(b.page, `${a.name} enters the room.`);
    await waitForOccupants(b.page, (n) => n.includes(a.name) && n.includes(b.name), `listed ${a.name} again for B`);
    await waitForOccupants(a.page, (n) => n.includes(a.name) && n.includes(b.name), `listed ${b.name} again for A`);

    // B says hello from the command line.
    await typeCommand(b.page, 'say hello');
    await waitForOutput(a.page, `${b.name} says: hello`);
    await waitForOutput(b.page, 'You say: hello');
    assert.equal(await b.page.inputValue('#command'), '', 'the command line is cleared after Enter');

    // Markup in chat is shown as text, and runs nothing.
    await typeCommand(a.page, `say ${XSS}`);
    await waitForOutput(b.page, `${a.name} says: ${XSS}`);
    await sleep(500); // time for an onerror handler to have fired, had an img been made
    assert.equal(await b.page.locator('#output img').count(), 0, 'an img element was created from chat');
    assert.equal(await a.page.locator('#output img').count(), 0, 'an img element was created from an echo');
    assert.deepEqual(b.page.dialogs, [], 'a dialog opened in B\'s page');
    assert.deepEqual(a.page.dialogs, [], 'a dialog opened in A\'s page');

    // A little more conversation, on other channels.
    await typeCommand(b.page, 'emote waves at the lamplighter');
    await waitForOutput(a.page, `${b.name} waves at the lamplighter.`);
    await typeCommand(a.page, 'global Fog is thick on the river tonight.');
    await waitForOutput(b.page, `${a.name} says (global): Fog is thick on the river tonight.`);
    await typeCommand(b.page, `whisper ${a.name} meet me by the market cross`);
    await waitForOutput(a.page, `${b.name} whispers to you: meet me by the market cross`);
    const whisper = a.page.locator('#output .line.ch-whisper').last();
    assert.equal(await whisper.count(), 1, 'the whisper is coloured as a whisper');
    await typeCommand(a.page, 'say On my way.');
    await waitForOutput(b.page, `${a.name} says: On my way.`);
    await typeCommand(a.page, 'frobnicate');
    await a.page.waitForSelector('#output .line.error');

    // History: the up arrow brings back the last command, down restores the draft.
    await b.page.fill('#command', 'draft');
    await b.page.press('#command', 'ArrowUp');
    assert.equal(await b.page.inputValue('#command'), `whisper ${a.name} meet me by the market cross`);
    await b.page.press('#command', 'ArrowUp');
    assert.equal(await b.page.inputValue('#command'), 'emote waves at the lamplighter');
    await b.page.press('#command', 'ArrowDown');
    await b.page.press('#command', 'ArrowDown');
    assert.equal(await b.page.inputValue('#command'), 'draft');
    await b.page.fill('#command', '');

    // A tick arrives every ~10 s.
    await a.page.waitForFunction(() => /tick \d+/.test(document.querySelector('#tick-text').textContent), null, { timeout: 15000 });

    // Screenshots of the game screen with the conversation: desktop, then phone width.
    fs.mkdirSync(SCREENSHOTS, { recursive: true });
    await a.page.fill('#command', '');
    await a.page.locator('#command').blur();
    await a.page.screenshot({ path: path.join(SCREENSHOTS, 'game-desktop.png') });

    await a.page.setViewportSize({ width: 390, height: 844 });
    await sleep(200);
    const box = await a.page.locator('#command').boundingBox();
    assert.ok(box && box.y >= 0 && box.y + box.height <= 844, `the command line is off screen at 390 px: ${JSON.stringify(box)}`);
    assert.ok(box.x >= 0 && box.x + box.width <= 390, `the command line overflows at 390 px: ${JSON.stringify(box)}`);
    const exitBox = await a.page.locator('#exits button[data-dir]').first().boundingBox();
    assert.ok(exitBox && exitBox.x + exitBox.width <= 390, 'the exits are off screen at 390 px');
    const scrollWidth = await a.page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(scrollWidth <= 390, `the page scrolls sideways at 390 px (${scrollWidth})`);
    await waitForOutput(a.page, 'You say: On my way.');
    await a.page.screenshot({ path: path.join(SCREENSHOTS, 'game-phone.png') });
    await a.page.setViewportSize({ width: 1280, height: 800 });
  }));

  it('goes straight back into the game after a reload', { timeout: TEST_TIMEOUT }, () => withLogs(async () => {
    assert.ok(b, 'needs the players of the previous test');
    await b.page.reload();
    await b.page.waitForSelector('#game-screen:not([hidden])');
    assert.equal(await b.page.isHidden('#auth-screen'), true);
    await waitForStatus(b.page, 'connected');
    await b.page.waitForFunction(() => !!document.querySelector('#room-panel').dataset.roomId);
    await waitForOccupants(b.page, (n) => n.includes(a.name) && n.includes(b.name), 'listed both after reload');
  }));

  it('reconnects by itself when the server restarts', { timeout: TEST_TIMEOUT }, () => withLogs(async () => {
    assert.ok(a, 'needs the players of the previous test');
    const room = await roomId(a.page);
    await stack.stopServer();
    await waitForStatus(a.page, 'reconnecting');
    assert.match(await a.page.textContent('#status-text'), /reconnecting…/);
    await a.page.waitForSelector('#banner:not([hidden])');
    await sleep(1500); // a few failed attempts while the server is down
    await stack.startServer();
    await waitForStatus(a.page, 'connected', 20000);
    // The server kept the player link-dead while it restarted, and the stream still
    // holds what happened: the client resumed from its last position.
    await waitForOutput(a.page, 'Reconnected — nothing missed', 5000);
    assert.equal(await roomId(a.page), room);
    assert.equal(await a.page.isHidden('#banner'), true);
    await waitForStatus(b.page, 'connected', 20000);
    // Still talking to each other afterwards.
    await typeCommand(b.page, 'say back again');
    await waitForOutput(a.page, `${b.name} says: back again`);
  }));

  it('resumes after its socket is cut, showing what it missed once, in order', { timeout: TEST_TIMEOUT }, () => withLogs(async () => {
    // Cy's WebSockets go through the test, which can cut them and refuse new ones for a
    // while, as a network that drops would.
    const c = { page: await newPage(), name: uniqueName('Cy') };
    const d = { page: await newPage(), name: uniqueName('Di') };
    let socket = null;
    let refusing = false;
    await c.page.routeWebSocket(/\/api\/ws/, (ws) => {
      if (refusing) {
        ws.close({ code: 4000, reason: 'cut by the test' });
        return;
      }
      ws.connectToServer();
      socket = ws;
    });
    await signIn(c.page, stack.baseUrl, 'register', c.name, PASSWORD);
    await waitForOutput(c.page, `Welcome, ${c.name}`);
    await signIn(d.page, stack.baseUrl, 'register', d.name, PASSWORD);
    await waitForOutput(d.page, `Welcome, ${d.name}`);
    await waitForOutput(c.page, `${d.name} has entered the game.`);
    await typeCommand(d.page, 'say one');
    await waitForOutput(c.page, `${d.name} says: one`);

    refusing = true;
    socket.close({ code: 4000, reason: 'cut by the test' });
    await waitForStatus(c.page, 'reconnecting');
    await typeCommand(d.page, 'say two');
    await waitForOutput(d.page, 'You say: two');
    await typeCommand(d.page, 'emote waves');
    await waitForOutput(d.page, `${d.name} waves.`);
    refusing = false;

    await waitForStatus(c.page, 'connected', 20000);
    await waitForOutput(c.page, 'Reconnected — nothing missed (2 events', 10000);
    await waitForOutput(c.page, `${d.name} waves.`);
    assert.equal(await countOutput(c.page, `${d.name} says: two`), 1);
    assert.equal(await countOutput(c.page, `${d.name} waves.`), 1);
    const text = await c.page.textContent('#output');
    assert.ok(text.indexOf(`${d.name} says: two`) < text.indexOf(`${d.name} waves.`), 'in order');
    // The room never saw Cy go.
    assert.equal(await countOutput(d.page, `${c.name} has left the game.`), 0);
    // And live again.
    await typeCommand(d.page, 'say three');
    await waitForOutput(c.page, `${d.name} says: three`);
    await c.page.context().close();
    await d.page.context().close();
  }));

  it('plays over server-sent events with ?transport=sse', { timeout: TEST_TIMEOUT }, async (t) => {
    const probe = await fetch(`${stack.baseUrl}/api/events`);
    await probe.body?.cancel();
    if (probe.status === 404) {
      t.skip('the server has no GET /api/events yet (404): SSE transport not tested');
      return;
    }
    await withLogs(async () => {
      const c = { page: await newPage(), name: uniqueName('Cy') };
      await signIn(c.page, stack.baseUrl, 'register', c.name, PASSWORD, '?transport=sse');
      assert.match(await c.page.textContent('#status-text'), /sse/);
      await waitForOutput(c.page, `Welcome, ${c.name}`);
      await typeCommand(c.page, 'say hi over sse');
      await waitForOutput(c.page, 'You say: hi over sse');
      await waitForOutput(a.page, `${c.name} says: hi over sse`);
      await typeCommand(a.page, 'say hello, streaming friend');
      await waitForOutput(c.page, `${a.name} says: hello, streaming friend`);
      await c.page.click('#exits button[data-dir]:not([disabled])');
      await waitForOutput(a.page, `${c.name} leaves the room.`);

      // The server's `event: close` carries 4001: no reconnect either.
      const other = await newPage();
      await signIn(other, stack.baseUrl, 'login', c.name, PASSWORD);
      await waitForStatus(c.page, 'offline');
      assert.match(await c.page.textContent('#status-text'), /elsewhere/);
      await other.context().close();
      await c.page.context().close();
    });
  });

  it('does not reconnect when the account logs in elsewhere (4001)', { timeout: TEST_TIMEOUT }, () => withLogs(async () => {
    assert.ok(a, 'needs the players of the previous test');
    const other = await newPage();
    await signIn(other, stack.baseUrl, 'login', a.name, PASSWORD);
    await waitForStatus(a.page, 'offline');
    assert.match(await a.page.textContent('#status-text'), /elsewhere/);
    await waitForOutput(a.page, 'logged in from another connection');
    await sleep(2000);
    assert.equal(await a.page.getAttribute('#status', 'data-state'), 'offline', 'it reconnected after 4001');
    assert.equal(await other.getAttribute('#status', 'data-state'), 'connected', 'the new login was replaced');
    const count = await countOutput(a.page, 'Reconnected');
    assert.equal(count, 1, `reconnected again:\n${await outputTail(a.page)}`);
    assert.ok((await occupants(other)).includes(a.name));

    // `quit` leaves without reconnecting; "Enter again" comes back.
    await typeCommand(other, 'quit');
    await waitForStatus(other, 'offline');
    assert.match(await other.textContent('#status-text'), /left the game/);
    await waitForOutput(other, 'You have left the game.');
    await sleep(1500);
    assert.equal(await other.getAttribute('#status', 'data-state'), 'offline', 'it reconnected after quit');
    await other.click('#banner button:has-text("Enter again")');
    await waitForStatus(other, 'connected');
    await waitForOutput(other, 'Reconnected.');
  }));
});
