// natsmud web client: plain JavaScript, no build step.
//
// Everything that came from the server or from other players is put into the page as text
// (textContent / text nodes), never as HTML.
(() => {
  'use strict';

  const SESSION_KEY = 'natsmud.session';
  const HISTORY_KEY = 'natsmud.history';
  const HISTORY_MAX = 100;
  const MAX_LINES = 1500;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  // Pings go every PING_MS and ticks about every 10 s: a socket silent this long is dead.
  const WATCHDOG_MS = 45000;
  const PING_MS = 25000;
  const CLOSE_REPLACED = 4001;
  const CLOSE_SLOW = 4008;
  const CLOSE_FULL = 1013;
  const CLOSE_TOO_BIG = 1009;

  const CHANNELS = ['say', 'emote', 'pose', 'local', 'global', 'whisper'];

  // The compass: [direction, label, grid area].
  const COMPASS = [
    ['northwest', 'NW', 'nw'], ['north', 'N', 'n'], ['northeast', 'NE', 'ne'], ['up', 'Up', 'up'],
    ['west', 'W', 'w'], [null, 'look', 'c'], ['east', 'E', 'e'],
    ['southwest', 'SW', 'sw'], ['south', 'S', 's'], ['southeast', 'SE', 'se'], ['down', 'Down', 'dn'],
  ];
  const COMPASS_DIRS = new Set(COMPASS.map((c) => c[0]).filter(Boolean));

  const $ = (id) => document.getElementById(id);

  /** Creates an element; `text` is always set as text, never parsed as HTML. */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // ---------------------------------------------------------------- state

  const state = {
    session: null, // { token, player_id, player_name }
    conn: null, // the open transport: { kind, send(obj) -> bool, close() }
    generation: 0, // bumps on every (re)connect; events of older connections are ignored
    attempt: 0,
    reconnectTimer: null,
    pingTimer: null,
    watchdogTimer: null,
    connectedOnce: false, // a game_state has been received on some connection
    position: null, // the last event position received: what a reconnect resumes from
    resuming: false, // this connection asked to resume from `position`
    greetingPosition: null, // where this connection started (from its game_state)
    lostNoticeShown: false,
    quitRequested: false,
    room: null,
    occupants: [],
    seenMessages: new Set(),
    seenOrder: [],
    history: [],
    historyPos: 0,
    draft: '',
  };

  // ---------------------------------------------------------------- session storage

  function loadSession() {
    try {
      const raw = sessionStorage.getItem(SESSION_KEY);
      const session = raw ? JSON.parse(raw) : null;
      return session && typeof session.token === 'string' && session.token ? session : null;
    } catch {
      return null;
    }
  }

  function saveSession(session) {
    try {
      sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    } catch {
      // Private mode without storage: the session lasts until the page closes.
    }
  }

  function clearSession() {
    try {
      sessionStorage.removeItem(SESSION_KEY);
    } catch {
      // nothing stored
    }
  }

  function loadHistory() {
    try {
      const list = JSON.parse(sessionStorage.getItem(HISTORY_KEY) || '[]');
      return Array.isArray(list) ? list.filter((x) => typeof x === 'string').slice(-HISTORY_MAX) : [];
    } catch {
      return [];
    }
  }

  function saveHistory() {
    try {
      sessionStorage.setItem(HISTORY_KEY, JSON.stringify(state.history));
    } catch {
      // not kept
    }
  }

  // ---------------------------------------------------------------- auth screen

  let authMode = 'login';

  function setAuthMode(mode) {
    authMode = mode;
    const register = mode === 'register';
    $('tab-login').setAttribute('aria-selected', String(!register));
    $('tab-register').setAttribute('aria-selected', String(register));
    $('auth-submit').textContent = register ? 'Create account' : 'Log in';
    $('password').setAttribute('autocomplete', register ? 'new-password' : 'current-password');
    $('username-hint').hidden = !register;
    $('password-hint').hidden = !register;
    showAuthError('');
  }

  function showAuthError(message) {
    const box = $('auth-error');
    box.textContent = message;
    box.hidden = !message;
  }

  async function submitAuth(event) {
    event.preventDefault();
    const username = $('username').value.trim();
    const password = $('password').value;
    if (!username || !password) {
      showAuthError('Enter a name and a password.');
      return;
    }
    const button = $('auth-submit');
    button.disabled = true;
    showAuthError('');
    const path = authMode === 'register' ? '/api/auth/register' : '/api/auth/login';
    try {
      const response = await fetch(path, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ username, password }),
      });
      const body = await readJson(response);
      if (!response.ok) {
        showAuthError(errorMessage(body, response));
        return;
      }
      if (!body || !body.access_token) {
        showAuthError('The server answered without a token; please try again.');
        return;
      }
      const session = {
        token: body.access_token,
        player_id: body.player_id,
        player_name: body.player_name || username,
      };
      saveSession(session);
      $('password').value = '';
      enterGame(session);
    } catch {
      showAuthError('Cannot reach the server. Check your connection and try again.');
    } finally {
      button.disabled = false;
    }
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch {
      return null;
    }
  }

  function errorMessage(body, response) {
    if (body && body.error && typeof body.error.message === 'string' && body.error.message) {
      return body.error.message;
    }
    return `The server refused (HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ''}).`;
  }

  function showAuth(message) {
    $('game-screen').hidden = true;
    $('auth-screen').hidden = false;
    document.title = 'natsmud';
    showAuthError(message || '');
    if (state.session && state.session.player_name) $('username').value = state.session.player_name;
    ($('username').value ? $('password') : $('username')).focus();
  }

  // ---------------------------------------------------------------- game screen

  function enterGame(session) {
    state.session = session;
    state.connectedOnce = false;
    state.position = null;
    state.quitRequested = false;
    state.attempt = 0;
    state.room = null;
    state.occupants = [];
    $('output').replaceChildren();
    $('player-name').textContent = session.player_name || '';
    renderRoom(null);
    renderOccupants();
    hideBanner();
    $('auth-screen').hidden = true;
    $('game-screen').hidden = false;
    $('command').focus();
    connect();
  }

  function logout() {
    disconnect();
    clearSession();
    state.session = null;
    $('password').value = '';
    setAuthMode('login');
    showAuth('');
  }

  /** The token no longer works: back to the form with a reason. */
  function sessionExpired() {
    const name = state.session && state.session.player_name;
    disconnect();
    clearSession();
    state.session = null;
    setAuthMode('login');
    if (name) $('username').value = name;
    showAuth('Your session has ended. Please log in again.');
  }

  // ---------------------------------------------------------------- status, banner

  function setStatus(kind, text) {
    const status = $('status');
    status.dataset.state = kind;
    $('status-text').textContent = text;
  }

  function transportLabel() {
    return wantSse() ? 'sse' : 'ws';
  }

  /** Shows a notice above the command line, with buttons [label, action]. */
  function showBanner(kind, text, actions) {
    const banner = $('banner');
    banner.dataset.kind = kind;
    $('banner-text').textContent = text;
    const box = $('banner-actions');
    box.replaceChildren();
    for (const [label, action] of actions || []) {
      const button = el('button', 'small', label);
      button.type = 'button';
      button.addEventListener('click', action);
      box.append(button);
    }
    banner.hidden = false;
  }

  function hideBanner() {
    $('banner').hidden = true;
  }

  // ---------------------------------------------------------------- transports

  function wantSse() {
    const param = new URLSearchParams(location.search).get('transport');
    return param === 'sse' || typeof window.WebSocket !== 'function';
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    closeTransport();
    if (!state.session) return;
    const generation = ++state.generation;
    state.resuming = Boolean(state.position);
    setStatus(state.connectedOnce ? 'reconnecting' : 'connecting',
      state.connectedOnce ? 'reconnecting…' : 'connecting…');
    state.conn = wantSse() ? openSse(generation) : openWebSocket(generation);
  }

  function disconnect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    state.generation++;
    closeTransport();
    stopTimers();
  }

  function closeTransport() {
    const conn = state.conn;
    state.conn = null;
    if (conn) conn.close();
  }

  /** `&since=<position>` when there is a position to resume from. */
  function sinceParam() {
    return state.resuming ? `&since=${encodeURIComponent(state.position)}` : '';
  }

  function openWebSocket(generation) {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${location.host}/api/ws?token=${encodeURIComponent(state.session.token)}${sinceParam()}`;
    let opened = false;
    let socket;
    try {
      socket = new WebSocket(url);
    } catch {
      setTimeout(() => transportClosed(generation, { code: 1006, reason: '', opened: false }), 0);
      return { kind: 'ws', send: () => false, close: () => {} };
    }
    socket.addEventListener('open', () => {
      if (generation !== state.generation) return;
      opened = true;
      transportOpened();
    });
    socket.addEventListener('message', (event) => {
      if (generation !== state.generation) return;
      if (typeof event.data === 'string') handleFrame(event.data);
    });
    socket.addEventListener('close', (event) => {
      if (generation !== state.generation) return;
      transportClosed(generation, { code: event.code, reason: event.reason, opened });
    });
    return {
      kind: 'ws',
      send(message) {
        if (socket.readyState !== WebSocket.OPEN) return false;
        socket.send(JSON.stringify(message));
        return true;
      },
      close() {
        try {
          socket.close(1000, 'bye');
        } catch {
          // already closed
        }
      },
    };
  }

  function openSse(generation) {
    // A fresh EventSource each time (this client closes one that fails), so the position
    // goes in the URL rather than in the Last-Event-ID a browser sends by itself.
    const url = `/api/events?token=${encodeURIComponent(state.session.token)}${sinceParam()}`;
    let opened = false;
    const source = new EventSource(url);
    const onMessage = (event) => {
      if (generation !== state.generation) return;
      handleFrame(event.data);
    };
    source.onopen = () => {
      if (generation !== state.generation) return;
      opened = true;
      transportOpened();
    };
    source.onmessage = onMessage;
    // SSE has no close frame: the server sends `event: close` with the WebSocket close
    // code it would have used, then ends the stream.
    source.addEventListener('close', (event) => {
      source.close();
      if (generation !== state.generation) return;
      let info = {};
      try {
        info = JSON.parse(event.data) || {};
      } catch {
        // no details
      }
      transportClosed(generation, { code: Number(info.code) || 1006, reason: str(info.reason), opened: true });
    });
    source.onerror = () => {
      source.close();
      if (generation !== state.generation) return;
      transportClosed(generation, { code: 1006, reason: '', opened });
    };
    return {
      kind: 'sse',
      send(message) {
        postCommand(generation, message);
        return true;
      },
      close() {
        source.close();
      },
    };
  }

  async function postCommand(generation, message) {
    let response;
    try {
      response = await fetch('/api/command', {
        method: 'POST',
        headers: {
          'Content-Type': 'application/json',
          Accept: 'application/json',
          Authorization: `Bearer ${state.session.token}`,
        },
        body: JSON.stringify(message),
      });
    } catch {
      if (generation === state.generation) printError('The command could not be sent: the server is unreachable.');
      return;
    }
    if (generation !== state.generation || response.ok) return;
    if (response.status === 401) {
      sessionExpired();
      return;
    }
    printError(errorMessage(await readJson(response), response));
  }

  function transportOpened() {
    state.lostNoticeShown = false;
    setStatus('connected', `connected · ${transportLabel()}`);
    hideBanner();
    startTimers();
  }

  function transportClosed(generation, { code, reason, opened }) {
    if (generation !== state.generation) return;
    stopTimers();
    state.conn = null;
    if (!state.session) return;

    if (code === CLOSE_REPLACED) {
      setStatus('offline', 'signed in elsewhere');
      printError('This account was logged in from another connection, so this one was closed.');
      showBanner('warn', 'You are playing in another window or device.', [
        ['Play here', () => { hideBanner(); connect(); }],
        ['Log out', logout],
      ]);
      return;
    }
    if (state.quitRequested) {
      state.quitRequested = false;
      // Quitting left the game: entering again starts afresh, with nothing to resume.
      state.position = null;
      setStatus('offline', 'left the game');
      printSystem('You have left the game.');
      showBanner('info', 'You have left the game.', [
        ['Enter again', () => { hideBanner(); connect(); }],
        ['Log out', logout],
      ]);
      return;
    }
    if (!state.lostNoticeShown && state.connectedOnce) {
      state.lostNoticeShown = true;
      let why = 'Connection lost';
      if (code === 1001) why = 'The server is restarting';
      else if (code === CLOSE_SLOW && reason.startsWith('events_lost')) {
        why = 'The server lost touch with the world for a moment and may have missed events';
      } else if (code === CLOSE_SLOW) why = 'The connection fell too far behind';
      else if (code === CLOSE_TOO_BIG) why = 'The server refused a message that was too large';
      else if (code === CLOSE_FULL) why = 'The server is full';
      printError(`${why}${reason ? ` (${reason})` : ''}. Reconnecting…`);
    }
    if (!opened) {
      // A refused upgrade looks like any network failure; ask the server whether the
      // token is still good before trying again.
      checkToken(generation).then((valid) => {
        if (generation !== state.generation) return;
        if (valid === false) sessionExpired();
        else scheduleReconnect();
      });
      return;
    }
    scheduleReconnect();
  }

  /** true / false, or null when the server cannot be asked. A GET without an upgrade is
   *  authenticated first: 401 means the token is refused. */
  async function checkToken() {
    try {
      const response = await fetch(`/api/ws?token=${encodeURIComponent(state.session.token)}`, {
        headers: { Accept: 'application/json' },
        cache: 'no-store',
      });
      if (response.status === 401) return false;
      return true;
    } catch {
      return null;
    }
  }

  function backoffDelay(attempt) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
    return Math.round(base * (0.8 + Math.random() * 0.2));
  }

  function scheduleReconnect() {
    clearTimeout(state.reconnectTimer);
    const delay = backoffDelay(state.attempt);
    state.attempt += 1;
    setStatus('reconnecting', 'reconnecting…');
    showBanner('warn', `Connection lost — reconnecting in ${(delay / 1000).toFixed(1)} s…`, [
      ['Retry now', () => connect()],
    ]);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function startTimers() {
    stopTimers();
    resetWatchdog();
    if (state.conn && state.conn.kind === 'ws') {
      state.pingTimer = setInterval(() => {
        if (state.conn) state.conn.send({ type: 'ping' });
      }, PING_MS);
    }
  }

  function stopTimers() {
    clearInterval(state.pingTimer);
    clearTimeout(state.watchdogTimer);
    state.pingTimer = null;
    state.watchdogTimer = null;
  }

  /** Over WebSocket our pings get pongs, so silence means a dead connection. (EventSource
   *  reports a dead stream by itself, and the server's keep-alives are not events.) */
  function resetWatchdog() {
    clearTimeout(state.watchdogTimer);
    if (!state.conn || state.conn.kind !== 'ws') return;
    const generation = state.generation;
    state.watchdogTimer = setTimeout(() => {
      if (generation !== state.generation) return;
      // Nothing heard, not even a tick: treat the connection as dead.
      state.generation++;
      closeTransport();
      transportClosed(state.generation, { code: 1006, reason: 'no data from the server', opened: true });
    }, WATCHDOG_MS);
  }

  /** Sends a client message; false (with a notice) when not connected. */
  function send(message) {
    if (!state.conn || !state.conn.send(message)) {
      printError('Not connected: that was not sent. Waiting for the connection to come back…');
      return false;
    }
    return true;
  }

  // ---------------------------------------------------------------- incoming frames

  function handleFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (!frame || typeof frame !== 'object') return;
    resetWatchdog();
    const data = frame.data && typeof frame.data === 'object' ? frame.data : {};
    const position = typeof frame.position === 'string' && frame.position ? frame.position : null;
    if (frame.event_type === 'game_state') {
      // Where this connection starts; while resuming, the missed events come first.
      state.greetingPosition = position;
      if (!state.resuming && position) state.position = position;
    } else if (position) {
      state.position = position;
    }
    switch (frame.event_type) {
      case 'game_state': return onGameState(data);
      case 'resumed': return onResumed(data);
      case 'room_update': return onRoomUpdate(data);
      case 'command_response': return printResponse(str(data.result), frame.timestamp);
      case 'player_entered':
      case 'player_entered_game':
        return onPresence(data, true, frame);
      case 'player_left':
      case 'player_left_game':
        return onPresence(data, false, frame);
      case 'chat_message': return onChat(data, frame.timestamp);
      case 'game_tick': return onTick(data);
      case 'error': return printError(str(data.message) || str(data.code) || 'Error', str(data.code), frame.timestamp);
      default: return undefined; // pong and anything newer
    }
  }

  /** The answer to a resume: the missed events (if any) follow it. */
  function onResumed(data) {
    state.resuming = false;
    if (data.recovered === true) {
      const missed = Number(data.missed) || 0;
      printSystem(missed === 0
        ? 'Reconnected — nothing missed.'
        : `Reconnected — nothing missed (${missed} event${missed === 1 ? '' : 's'} while you were away below).`);
      return;
    }
    if (state.greetingPosition) state.position = state.greetingPosition;
    const why = {
      window_exceeded: 'you were away too long',
      epoch_changed: 'the server lost its event history',
      too_many: 'too much happened while you were away',
      left_the_game: 'you had left the game',
      unavailable: 'the event history is unavailable',
    }[str(data.reason)] || str(data.reason);
    printSystem(`Reconnected — some events could not be recovered${why ? ` (${why})` : ''}.`);
  }

  function str(value) {
    return typeof value === 'string' ? value : value === undefined || value === null ? '' : String(value);
  }

  function onGameState(data) {
    const player = data.player || {};
    if (player.name && state.session) {
      state.session.player_name = player.name;
      if (player.id) state.session.player_id = player.id;
      saveSession(state.session);
      $('player-name').textContent = player.name;
    }
    const again = state.connectedOnce;
    state.connectedOnce = true;
    state.attempt = 0;
    state.lostNoticeShown = false;
    setStatus('connected', `connected · ${transportLabel()}`);
    hideBanner();
    if (!state.resuming) {
      printSystem(again ? 'Reconnected.' : `Welcome, ${player.name || state.session.player_name}. Type help for the commands.`);
    }
    setRoom(data.room, data.occupants);
  }

  function onRoomUpdate(data) {
    setRoom(data.room, data.occupants);
  }

  function setRoom(room, occupants) {
    if (room && typeof room === 'object') {
      state.room = room;
      renderRoom(room);
    }
    state.occupants = Array.isArray(occupants) ? occupants.map(str).filter(Boolean) : [];
    renderOccupants();
    if (room) printRoom(room);
  }

  function onPresence(data, entered, frame) {
    const name = str(data.player_name);
    const me = state.session && state.session.player_name;
    // Presence notices of another room (sent before a move took effect) do not change ours.
    const here = !frame.room_id || !state.room || frame.room_id === state.room.id;
    if (name && here) {
      const known = state.occupants.some((n) => n.toLowerCase() === name.toLowerCase());
      if (entered && !known) state.occupants.push(name);
      if (!entered && known && name !== me) {
        state.occupants = state.occupants.filter((n) => n.toLowerCase() !== name.toLowerCase());
      }
      renderOccupants();
    }
    const message = str(data.message) || `${name} ${entered ? 'arrives' : 'leaves'}.`;
    const line = addLine(`presence ${entered ? 'in' : 'out'}`, frame.timestamp);
    line.append(namedBody(message, name));
    finishLine(line);
  }

  function onChat(data, timestamp) {
    const id = str(data.message_id);
    if (id) {
      if (state.seenMessages.has(id)) return;
      state.seenMessages.add(id);
      state.seenOrder.push(id);
      if (state.seenOrder.length > 500) state.seenMessages.delete(state.seenOrder.shift());
    }
    const channel = CHANNELS.includes(data.channel) ? data.channel : 'other';
    const line = addLine(`chat ch-${channel}`, timestamp);
    line.dataset.channel = channel;
    const body = namedBody(str(data.message), str(data.player_name));
    if (channel === 'local' || channel === 'global' || channel === 'whisper') {
      body.prepend(el('span', 'tag', channel), document.createTextNode(' '));
    }
    line.append(body);
    finishLine(line);
  }

  function onTick(data) {
    const tick = $('tick');
    $('tick-text').textContent = `tick ${str(data.tick_number)}`;
    const players = Number(data.active_players);
    tick.title = Number.isFinite(players)
      ? `Last game tick · ${players} player${players === 1 ? '' : 's'} online`
      : 'Last game tick';
    tick.classList.remove('beat');
    // Restart the pulse animation.
    void tick.offsetWidth;
    tick.classList.add('beat');
  }

  // ---------------------------------------------------------------- output pane

  function nearBottom() {
    const out = $('output');
    return out.scrollHeight - out.scrollTop - out.clientHeight < 48;
  }

  let stickToBottom = true;
  // Whether the pane is scrolled to its newest line.
  let pinned = true;

  function addLine(kind, timestamp) {
    stickToBottom = nearBottom();
    const line = el('div', `line ${kind}`);
    const when = timestamp ? new Date(timestamp) : new Date();
    const time = el('time', 'ts', formatTime(Number.isNaN(when.getTime()) ? new Date() : when));
    line.append(time);
    return line;
  }

  function finishLine(line, force) {
    const out = $('output');
    out.append(line);
    while (out.childElementCount > MAX_LINES) out.firstElementChild.remove();
    if (force || stickToBottom) {
      out.scrollTop = out.scrollHeight;
      pinned = true;
      $('jump').hidden = true;
    } else {
      $('jump').hidden = false;
    }
  }

  function formatTime(date) {
    return `${String(date.getHours()).padStart(2, '0')}:${String(date.getMinutes()).padStart(2, '0')}`;
  }

  /** `message` as text, with a leading `name` set apart. */
  function namedBody(message, name) {
    const body = el('span', 'body');
    if (name && message.startsWith(name)) {
      body.append(el('span', 'who', name), document.createTextNode(message.slice(name.length)));
    } else {
      body.textContent = message;
    }
    return body;
  }

  function printSystem(text) {
    const line = addLine('system');
    line.append(el('span', 'body', text));
    finishLine(line);
  }

  function printResponse(text, timestamp) {
    const line = addLine('response', timestamp);
    line.append(el('span', 'body', text));
    finishLine(line);
  }

  function printError(text, code, timestamp) {
    const line = addLine('error', timestamp);
    if (code) line.dataset.code = code;
    line.append(el('span', 'body', text));
    finishLine(line);
  }

  function printEcho(text) {
    const line = addLine('echo');
    line.append(el('span', 'body', text));
    finishLine(line, true);
  }

  function printRoom(room) {
    const line = addLine('room');
    const body = el('div', 'body');
    body.append(el('div', 'room-title', str(room.name)));
    if (room.description) body.append(el('div', 'room-text', str(room.description)));
    const exits = Object.keys(room.exits || {});
    const exitsLine = el('div', 'room-exits');
    exitsLine.append(el('span', 'label', 'Exits: '), document.createTextNode(exits.length ? exits.join(', ') : 'none'));
    body.append(exitsLine);
    const me = state.session && state.session.player_name;
    const others = state.occupants.filter((n) => n !== me);
    const here = el('div', 'room-here');
    if (others.length) {
      here.append(el('span', 'label', 'Also here: '), document.createTextNode(others.join(', ')));
    } else {
      here.append(el('span', 'label', 'You are alone here.'));
    }
    body.append(here);
    line.append(body);
    finishLine(line, true);
  }

  // ---------------------------------------------------------------- room & people panels

  function prettyId(id) {
    return str(id).replace(/_/g, ' ').replace(/\b\w/g, (c) => c.toUpperCase());
  }

  function renderRoom(room) {
    $('room-panel').dataset.roomId = room ? str(room.id) : '';
    $('room-name').textContent = room ? str(room.name) : '…';
    const desc = $('room-desc');
    desc.textContent = room ? str(room.description) : '';
    desc.classList.remove('open');
    let zone = '';
    if (room) {
      const z = str(room.zone);
      let sub = str(room.sub_zone);
      if (z && sub.startsWith(`${z}_`)) sub = sub.slice(z.length + 1);
      zone = [prettyId(z), prettyId(sub)].filter(Boolean).join(' · ');
    }
    $('room-zone').textContent = zone;
    document.title = room ? `${str(room.name)} — natsmud` : 'natsmud';

    const exits = (room && room.exits && typeof room.exits === 'object') ? room.exits : {};
    const compass = $('exits');
    compass.replaceChildren();
    for (const [dir, label, area] of COMPASS) {
      const button = el('button', `exit pos-${area}`, label);
      button.type = 'button';
      if (dir === null) {
        button.classList.add('look');
        button.title = 'Look around';
        button.setAttribute('aria-label', 'Look around');
        button.disabled = !room;
        button.addEventListener('click', () => runCommand('look'));
      } else if (Object.prototype.hasOwnProperty.call(exits, dir)) {
        button.dataset.dir = dir;
        button.dataset.to = str(exits[dir]);
        button.title = `Go ${dir}`;
        button.setAttribute('aria-label', `Go ${dir}`);
        button.addEventListener('click', () => go(dir));
      } else {
        button.disabled = true;
        button.classList.add('none');
        button.setAttribute('aria-hidden', 'true');
        button.tabIndex = -1;
      }
      compass.append(button);
    }
    const extra = $('exits-extra');
    extra.replaceChildren();
    for (const dir of Object.keys(exits)) {
      if (COMPASS_DIRS.has(dir)) continue;
      const button = el('button', 'exit wide', dir);
      button.type = 'button';
      button.dataset.dir = dir;
      button.dataset.to = str(exits[dir]);
      button.title = `Go ${dir}`;
      button.addEventListener('click', () => go(dir));
      extra.append(button);
    }
    extra.hidden = !extra.childElementCount;
  }

  function renderOccupants() {
    const me = state.session && state.session.player_name;
    const names = [...state.occupants].sort((a, b) => {
      if (a === me) return -1;
      if (b === me) return 1;
      return a.localeCompare(b);
    });
    const list = $('occupants');
    list.replaceChildren();
    for (const name of names) {
      const item = el('li', name === me ? 'me' : '');
      item.dataset.name = name;
      if (name === me) {
        item.append(el('span', 'person', name), el('span', 'you', 'you'));
      } else {
        const button = el('button', 'person', name);
        button.type = 'button';
        button.title = `Whisper to ${name}`;
        button.addEventListener('click', () => {
          const input = $('command');
          input.value = `whisper ${name} `;
          input.focus();
          input.setSelectionRange(input.value.length, input.value.length);
        });
        item.append(button);
      }
      list.append(item);
    }
    if (!names.length) list.append(el('li', 'empty', 'Nobody here.'));
    $('occupant-count').textContent = String(names.length);
  }

  // ---------------------------------------------------------------- commands

  function go(dir) {
    printEcho(`go ${dir}`);
    state.quitRequested = false;
    send({ type: 'game_command', data: { command: 'go', args: [dir] } });
  }

  function runCommand(line) {
    printEcho(line);
    state.quitRequested = /^quit\b/i.test(line);
    send({ type: 'game_command', data: { command: line } });
  }

  function remember(line) {
    if (state.history[state.history.length - 1] !== line) {
      state.history.push(line);
      if (state.history.length > HISTORY_MAX) state.history.shift();
      saveHistory();
    }
    state.historyPos = state.history.length;
    state.draft = '';
  }

  function submitCommand(event) {
    event.preventDefault();
    const input = $('command');
    const line = input.value.trim();
    if (!line) return;
    remember(line);
    input.value = '';
    runCommand(line);
  }

  function commandKeys(event) {
    const input = $('command');
    if (event.key === 'ArrowUp') {
      if (!state.history.length) return;
      event.preventDefault();
      if (state.historyPos >= state.history.length) state.draft = input.value;
      state.historyPos = Math.max(0, state.historyPos - 1);
      input.value = state.history[state.historyPos];
    } else if (event.key === 'ArrowDown') {
      if (state.historyPos >= state.history.length) return;
      event.preventDefault();
      state.historyPos += 1;
      input.value = state.historyPos >= state.history.length ? state.draft : state.history[state.historyPos];
    } else if (event.key === 'Escape') {
      input.value = '';
      state.historyPos = state.history.length;
      return;
    } else {
      return;
    }
    const end = input.value.length;
    requestAnimationFrame(() => input.setSelectionRange(end, end));
  }

  /** Typing anywhere on the game screen goes to the command line. */
  function globalKeys(event) {
    if ($('game-screen').hidden || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) return;
    if (event.key.length === 1 && !(target instanceof HTMLButtonElement && event.key === ' ')) {
      $('command').focus();
    }
  }

  // ---------------------------------------------------------------- start

  function init() {
    state.history = loadHistory();
    state.historyPos = state.history.length;

    $('tab-login').addEventListener('click', () => setAuthMode('login'));
    $('tab-register').addEventListener('click', () => setAuthMode('register'));
    $('auth-form').addEventListener('submit', submitAuth);
    $('command-form').addEventListener('submit', submitCommand);
    $('command').addEventListener('keydown', commandKeys);
    $('logout').addEventListener('click', logout);
    $('room-desc').addEventListener('click', () => $('room-desc').classList.toggle('open'));
    $('jump').addEventListener('click', () => {
      const out = $('output');
      out.scrollTop = out.scrollHeight;
      $('jump').hidden = true;
    });
    $('output').addEventListener('scroll', () => {
      pinned = nearBottom();
      if (pinned) $('jump').hidden = true;
    });
    // Keep the newest line in view when the pane changes size (rotation, keyboard, resize).
    if (typeof ResizeObserver === 'function') {
      new ResizeObserver(() => {
        if (pinned) $('output').scrollTop = $('output').scrollHeight;
      }).observe($('output'));
    }
    const narrow = window.matchMedia('(max-width: 760px)');
    const placeholder = () => {
      $('command').placeholder = narrow.matches ? 'say hello · look · help' : 'Type a command — try: say hello';
    };
    placeholder();
    narrow.addEventListener('change', placeholder);
    document.addEventListener('keydown', globalKeys);
    window.addEventListener('online', () => {
      if (state.session && state.reconnectTimer) connect();
    });

    const session = loadSession();
    if (session) {
      enterGame(session);
    } else {
      setAuthMode('login');
      showAuth('');
    }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', init);
  } else {
    init();
  }
})();
