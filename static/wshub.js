/*
 * wshub.js — dependency-free browser client for wshub (see docs/PROTOCOL.md).
 *
 * Classic script:  <script src="/wshub.js"></script>  → window.Wshub
 * ES module:       import { Wshub } from '/wshub.mjs'  (re-exports globalThis.Wshub)
 *
 *   const hub = new Wshub({ getToken: async () => token, persist: 'session' });
 *   hub.on('state', s => ...);            // connecting | connected | reconnecting | closed
 *   hub.on('reserva_creada', n => ...);   // notifications by type, or '*' for all of them
 *   hub.on('missed', ({stream}) => ...);  // resume failed: reload the app's data
 *   hub.connect();
 *   await hub.subscribe('room-1');
 *   hub.clientId                          // this connection's client_id from hub:connected:
 *                                         // send it as /notify `exclude_client` so this tab does
 *                                         // not get its own echo (new on every reconnect)
 *
 * What it does for you:
 *  - reconnects with exponential backoff + full jitter (base 500 ms, cap 30 s; reset once a
 *    connection has been stable for a while), and on 1001 "going away";
 *  - resumes: remembers the highest `seq` (and its `epoch`) seen through the automatic streams
 *    (broadcast, user:*, role:*) and per subscribed channel, and asks the hub to replay what
 *    was missed (`/ws?epoch=E&since=S`, `subscribe` with `since`+`epoch`). With
 *    persist:'session' positions survive a page reload (sessionStorage);
 *  - drops duplicates by event `id` (an event in several streams may be replayed twice);
 *  - acknowledges every notification handed to the app, in batches ({"type":"ack","ids":[…]}).
 */
(function (root) {
  'use strict';

  var BACKOFF_BASE_MS = 500;
  var BACKOFF_CAP_MS = 30000;
  var STABLE_MS = 5000;        // a connection up this long resets the backoff
  var RECENT_IDS = 1000;       // size of the dedupe window
  var MAX_FRAME = 500;         // stay under the hub's default --max-message-bytes (512)
  var AUTO = '(auto)';         // position key of the automatic streams
  // Sharing one socket between the tabs of a browser (see "tabs" below).
  var HEARTBEAT_MS = 1000;     // the leader announces itself (and checks its tabs) this often
  var TAB_TIMEOUT_MS = 4000;   // without Web Locks: silence after which a tab counts as gone
  var CLAIM_WAIT_MS = 300;     // without Web Locks: how long a new tab listens for a leader

  // broadcast, user:* and role:* are joined automatically and resumed through /ws?since=
  function isAuto(stream) {
    return stream === 'broadcast' || /^(user|role):/.test(stream);
  }

  // Seconds-since-epoch `exp` of a JWT, or null (used to refresh the token before it expires).
  function jwtExp(token) {
    try {
      var p = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      var exp = JSON.parse(atob(p + '==='.slice((p.length + 3) % 4))).exp;
      return typeof exp === 'number' ? exp : null;
    } catch (e) { return null; }
  }

  function Wshub(opts) {
    opts = opts || {};
    var loc = root.location || { protocol: 'http:', host: 'localhost' };
    this.url = opts.url || (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host + '/ws';
    this.token = opts.token || null;
    this.getToken = opts.getToken || null;
    this.ackBatchMs = opts.ackBatchMs == null ? 200 : opts.ackBatchMs;
    this.backoffBaseMs = opts.backoffBaseMs || BACKOFF_BASE_MS;
    this.backoffCapMs = opts.backoffCapMs || BACKOFF_CAP_MS;
    this.stableMs = opts.stableMs || STABLE_MS;
    this.storageKey = opts.persist === 'session' ? 'wshub:' + this.url : null;
    // One socket per browser: tabs of this origin with the same hub URL share one connection.
    this.shared = opts.shared !== false && typeof root.BroadcastChannel === 'function';
    this.leader = false;         // shared: this tab holds the socket

    this.state = 'closed';
    this.clientId = null;        // client_id of the current connection (for exclude_client)
    this.user = null;
    this.epoch = null;
    this.channels = [];          // automatic streams from hub:connected

    this._listeners = {};
    this._ws = null;
    this._wanted = false;        // connect() called and close() not: keep reconnecting
    this._everConnected = false;
    this._attempt = 0;           // backoff exponent
    this._authRetried = false;   // 4001: getToken is tried again once
    this._timers = {};
    this._subs = {};             // channel -> {subscribed, waiters: [{resolve, reject}]}
    this._unsubs = {};           // channel -> [{resolve, reject}]
    this._publishes = [];        // [{channel, resolve, reject}] in send order
    this._acks = [];
    this._replay = {};           // stream key -> {left, seq}: bump to seq after `left` replays
    this._pos = { auto: null, chans: {} };  // {seq, epoch} per position key
    this._recent = [];           // dedupe ring + set
    this._recentSet = new Set();
    this._peerIds = new Set();   // shared: ids in the dedupe window that came from another tab
    this._notify = {};           // type -> [fn]: onNotify handlers (one tab per event)
    this._tab = Math.random().toString(36).slice(2) + Date.now().toString(36);
    this._mine = {};             // shared: channels this tab subscribed
    this._reqs = {};             // shared: rid -> {q, resolve, reject} waiting for the leader
    this._rid = 0;
    this._load();
    var self = this;
    // Save positions when the page goes away, so that a reload resumes exactly.
    if (this.storageKey && root.addEventListener) root.addEventListener('pagehide', function () { self._save(); });
  }

  var P = Wshub.prototype;

  // ---- events ---------------------------------------------------------------------------
  P.on = function (type, fn) {
    (this._listeners[type] = this._listeners[type] || []).push(fn);
    return this;
  };
  P.off = function (type, fn) {
    var l = this._listeners[type];
    if (l) this._listeners[type] = fn ? l.filter(function (f) { return f !== fn; }) : [];
    return this;
  };
  // Lifecycle events (state, hub:*, recovered, missed, error); the leader passes them on to
  // the other tabs. Notifications go through _hand instead.
  P._emit = function (type, arg) {
    if (this.leader) this._post({ t: 'emit', type: type, arg: arg });
    return this._emitLocal(type, arg);
  };
  P._emitLocal = function (type, arg) {
    var l = (this._listeners[type] || []).slice();
    for (var i = 0; i < l.length; i++) {
      try { l[i].call(this, arg); } catch (e) { console.error('wshub listener for', type, e); }
    }
    return l.length;
  };
  P._setState = function (s) {
    if (this.state !== s) { this.state = s; this._emit('state', s); }
  };

  // Like on(), but in shared mode the handler runs in exactly one tab per event (a visible one
  // when there is one): for toasts and sounds that must not repeat in every tab.
  P.onNotify = function (type, fn) {
    (this._notify[type] = this._notify[type] || []).push(fn);
    if (this._bc && !this.leader) this._hello();
    return this;
  };

  // ---- connection lifecycle -------------------------------------------------------------
  P.connect = function () {
    if (this.shared) return this._joinTabs();
    return this._connectCore();
  };

  P._connectCore = function () {
    this._wanted = true;
    if (this._ws || this._timers.retry || this._opening) return this;
    this._setState(this._everConnected ? 'reconnecting' : 'connecting');
    this._open();
    return this;
  };

  P.close = function () {
    if (!this.shared) return this._closeCore();
    this._leaveTabs();
    this._setState('closed');
    return this;
  };

  P._closeCore = function () {
    this._wanted = false;
    this._opening = false;
    this._gen = (this._gen || 0) + 1;  // an _open() waiting for getToken gives up
    this._flushAcks();
    this._clearTimers();
    this._save();
    if (this._ws) { var ws = this._ws; this._ws = null; this._detach(ws); ws.close(1000); }
    this._failPending(new Error('closed'));
    this._setState('closed');
    return this;
  };

  P._open = async function () {
    var token = this.token, gen = this._gen;
    this._opening = true;
    if (this.getToken) {
      try { token = await this.getToken(); } catch (e) {
        if (gen !== this._gen) return;
        this._opening = false;
        this._emit('error', { code: 'token', message: String(e && e.message || e) });
        return this._scheduleRetry();
      }
      if (gen !== this._gen) return;
      this.token = token;
    }
    this._opening = false;
    if (!this._wanted || this._ws) return;
    var q = [];
    if (token) q.push('token=' + encodeURIComponent(token));
    var a = this._pos.auto;
    this._askedResume = !!(a && a.epoch);
    if (this._askedResume) q.push('epoch=' + encodeURIComponent(a.epoch), 'since=' + a.seq);
    var ws;
    try { ws = new WebSocket(this.url + (q.length ? (this.url.indexOf('?') < 0 ? '?' : '&') + q.join('&') : '')); }
    catch (e) { return this._scheduleRetry(); }
    this._ws = ws;
    var self = this;
    ws.onmessage = function (ev) { self._onFrame(ev.data); };
    ws.onclose = function (ev) { self._onClose(ws, ev.code, ev.reason); };
    ws.onerror = function () { /* onclose follows and decides */ };
  };

  P._detach = function (ws) { ws.onmessage = ws.onclose = ws.onerror = null; };

  P._onClose = function (ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    this._detach(ws);
    clearTimeout(this._timers.stable); clearTimeout(this._timers.refresh);
    this._acks = [];             // acks can only go over the connection that delivered them
    this._failPending(new Error('connection closed (' + code + ')'), true);
    this._emit('hub:close', { code: code, reason: reason });
    if (!this._wanted) return this._setState('closed');
    if (code === 4001 || code === 4002) {
      // Unauthorized / token expired: ask getToken for a fresh token once, then give up.
      if (this.getToken && !this._authRetried) {
        this._authRetried = true;
        this._setState('reconnecting');
        return this._open();
      }
      this._wanted = false;
      this._setState('closed');
      this._emit('error', { code: code === 4001 ? 'unauthorized' : 'token_expired',
        message: reason || 'the hub refused the token (close ' + code + ')' });
      // Shared: give the socket up, so that another tab (with its own getToken) may try.
      if (this.shared) this._leaveTabs();
      return;
    }
    // 1001 (hub shutting down), 4003 (slow consumer), 4004, 4005, network errors, …: retry.
    this._scheduleRetry();
  };

  // Exponential backoff with full jitter: sleep uniformly in [0, min(cap, base * 2^attempt)].
  P._scheduleRetry = function () {
    if (!this._wanted) return;
    var self = this;
    var max = Math.min(this.backoffCapMs, this.backoffBaseMs * Math.pow(2, this._attempt++));
    this._setState('reconnecting');
    this._timers.retry = setTimeout(function () { self._timers.retry = null; self._open(); },
      Math.random() * max);
  };

  P._clearTimers = function () {
    for (var k in this._timers) { clearTimeout(this._timers[k]); this._timers[k] = null; }
  };

  P._send = function (obj) {
    if (!this._ws || this._ws.readyState !== 1) return false;
    this._ws.send(JSON.stringify(obj));
    return true;
  };

  // ---- incoming frames ------------------------------------------------------------------
  P._onFrame = function (text) {
    // One JSON object per frame; tolerate several joined by newlines (as the Go hub does).
    var lines = String(text).split('\n');
    for (var i = 0; i < lines.length; i++) {
      if (!lines[i].trim()) continue;
      var msg;
      try { msg = JSON.parse(lines[i]); } catch (e) { console.warn('wshub: bad frame', lines[i]); continue; }
      if (msg && typeof msg.type === 'string' && msg.type.indexOf('hub:') === 0) this._onControl(msg);
      else if (msg && msg.id != null) this._onNotification(msg);
    }
  };

  P._onControl = function (m) {
    var ch = m.channel, w, i;
    switch (m.type) {
      case 'hub:connected':
        this.clientId = m.client_id; this.user = m.user; this.epoch = m.epoch;
        this.channels = m.channels || [];
        this._everConnected = true;
        this._authRetried = false;
        this._afterResume(AUTO, m, this._askedResume, { stream: 'auto', channels: this.channels });
        this._setState('connected');
        this._stableTimer();
        this._refreshTimer();
        this._resubscribe();
        break;
      case 'hub:subscribed':
        if (!this._subs[ch]) break;                      // unsubscribed meanwhile
        this._subs[ch].subscribed = true;
        this._afterResume(ch, m, this._subs[ch].askedSince, { stream: ch });
        w = this._subs[ch].waiters; this._subs[ch].waiters = [];
        for (i = 0; i < w.length; i++) w[i].resolve(m);
        break;
      case 'hub:unsubscribed':
        w = this._unsubs[ch] || []; delete this._unsubs[ch];
        for (i = 0; i < w.length; i++) w[i].resolve(m);
        break;
      case 'hub:published':
        this._takePublish(ch, function (p) { p.resolve(m); });
        break;
      case 'hub:error':
        this._onError(m);
        this._emit('error', m);
        break;
    }
    this._emit(m.type, m);
    this._emit('hub:*', m);
  };

  // Settle the pending request a hub:error answers: matched by `channel`, and by `request`
  // (the request's type) when the hub names it; otherwise by what is pending for that channel.
  P._onError = function (m) {
    var ch = m.channel, req = m.request, err = new Error(m.message || m.code), w, i;
    err.code = m.code; err.frame = m;
    if (ch == null) return;
    if (req && typeof req === 'object') req = req.type;
    var sub = this._subs[ch], pendingSub = !!(sub && !sub.subscribed);
    if (!req) {
      req = m.code === 'publish_forbidden' ? 'publish'
        : pendingSub ? 'subscribe' : this._unsubs[ch] ? 'unsubscribe' : 'publish';
    }
    if (req === 'publish') {
      this._takePublish(ch, function (p) { p.reject(err); });
    } else if (req === 'unsubscribe' && this._unsubs[ch]) {
      w = this._unsubs[ch]; delete this._unsubs[ch];
      for (i = 0; i < w.length; i++) (m.code === 'not_subscribed' ? w[i].resolve(m) : w[i].reject(err));
    } else if (req === 'subscribe' && pendingSub) {
      // A refused subscription is dropped: it is not retried on reconnect.
      w = sub.waiters; delete this._subs[ch]; delete this._pos.chans[ch]; this._scheduleSave();
      for (i = 0; i < w.length; i++) w[i].reject(err);
    }
  };

  P._takePublish = function (ch, fn) {
    for (var i = 0; i < this._publishes.length; i++) {
      if (this._publishes[i].channel === ch) { fn(this._publishes.splice(i, 1)[0]); return true; }
    }
    return false;
  };

  // hub:connected / hub:subscribed: learn the epoch and position, report recovery.
  // `asked`: a resume (since + epoch) was sent for this stream.
  P._afterResume = function (key, m, asked, info) {
    delete this._replay[key];
    if (asked && m.recovered === true) {
      // Replayed events follow; once all `replayed` of them arrived we are at `seq`.
      if (m.replayed > 0) this._replay[key] = { left: m.replayed, seq: m.seq, epoch: m.epoch };
      else this._setPos(key, m.seq, m.epoch);
      this._emit('recovered', { stream: info.stream, channels: info.channels, recovered: true, replayed: m.replayed || 0 });
      return;
    }
    // Fresh start, or recovery failed (new epoch, history trimmed): start from the hub's now.
    if (key === AUTO) this._pos.auto = null; else delete this._pos.chans[key];
    this._setPos(key, m.seq, m.epoch);
    if (asked) {
      // recovered:false (or a hub that ignored the resume): events may be lost.
      info.epoch = m.epoch;
      this._emit('recovered', { stream: info.stream, channels: info.channels, recovered: false, replayed: m.replayed || 0 });
      this._emit('missed', info);
    }
  };

  P._setPos = function (key, seq, epoch) {
    if (typeof seq !== 'number' || epoch == null) return;
    var cur = key === AUTO ? this._pos.auto : this._pos.chans[key];
    if (cur && cur.epoch === epoch && cur.seq >= seq) return;
    if (key === AUTO) this._pos.auto = { seq: seq, epoch: epoch };
    else this._pos.chans[key] = { seq: seq, epoch: epoch };
    if (this.leader) this._post({ t: 'pos', key: key, seq: seq, epoch: epoch });
    this._scheduleSave();
  };

  P._onNotification = function (n) {
    var stream = n.channel || 'broadcast';
    var key = isAuto(stream) ? AUTO : stream;
    if (key === AUTO || this._subs[key]) this._setPos(key, n.seq, n.epoch || this.epoch);
    var r = this._replay[key];
    if (r && --r.left <= 0) { delete this._replay[key]; this._setPos(key, r.seq, r.epoch); }
    // Deduplicate: an event that matched several streams may come once per stream on replay.
    // A tab that took over the socket acks what an earlier leader showed but could not ack.
    if (!this._remember(n.id)) {
      if (this._peerIds.delete(n.id)) this._queueAck(n.id);   // shown by an earlier leader
      return;
    }
    var to = this.shared ? this._notifyTab(n) : this._tab;
    if (this.shared) this._post({ t: 'ev', n: n, to: to });
    this._hand(n, to === this._tab);
    this._queueAck(n.id);
  };

  // Record an event id in the dedupe window; false when it was already there.
  P._remember = function (id) {
    if (this._recentSet.has(id)) return false;
    this._recentSet.add(id);
    this._recent.push(id);
    if (this._recent.length > RECENT_IDS) {
      var old = this._recent.shift();
      this._recentSet.delete(old); this._peerIds.delete(old);
    }
    this._scheduleSave();
    return true;
  };

  // Hand a new event to the app: on(type), on('*'), and onNotify when this tab was chosen.
  // In shared mode a tab sees channel events only for the channels it subscribed itself.
  P._hand = function (n, notifyHere) {
    var stream = n.channel || 'broadcast';
    if (!this.shared || isAuto(stream) || this._mine[stream]) {
      this._emitLocal(n.type, n);
      this._emitLocal('*', n);
    }
    if (!notifyHere) return;
    var l = (this._notify[n.type] || []).concat(this._notify['*'] || []);
    for (var i = 0; i < l.length; i++) {
      try { l[i].call(this, n); } catch (e) { console.error('wshub notify handler for', n.type, e); }
    }
  };

  // ---- subscriptions, publish -----------------------------------------------------------
  P.subscribe = function (channel) {
    if (!this.shared) return this._subscribeCore(channel);
    this._mine[channel] = true;
    if (this.leader) return this._refAdd(this._tab, channel);
    return this._request({ op: 'sub', ch: channel });
  };

  P._subscribeCore = function (channel) {
    var self = this, s = this._subs[channel];
    if (s && s.subscribed) return Promise.resolve({ type: 'hub:subscribed', channel: channel });
    if (!s) s = this._subs[channel] = { subscribed: false, waiters: [] };
    var p = new Promise(function (resolve, reject) { s.waiters.push({ resolve: resolve, reject: reject }); });
    if (s.waiters.length === 1 && this.state === 'connected') this._sendSubscribe(channel);
    p.catch(function () {});  // a caller that does not await must not cause "unhandled rejection"
    return p;
  };

  P._sendSubscribe = function (channel) {
    var pos = this._pos.chans[channel], msg = { type: 'subscribe', channel: channel };
    this._subs[channel].askedSince = !!(pos && pos.epoch);
    if (pos && pos.epoch) { msg.since = pos.seq; msg.epoch = pos.epoch; }
    this._send(msg);
  };

  // After (re)connecting: subscribe again to every channel, resuming each from its position.
  P._resubscribe = function () {
    for (var ch in this._subs) { this._subs[ch].subscribed = false; this._sendSubscribe(ch); }
  };

  P.unsubscribe = function (channel) {
    if (!this.shared) return this._unsubscribeCore(channel);
    delete this._mine[channel];
    if (this.leader) return this._refDel(this._tab, channel);
    return this._request({ op: 'unsub', ch: channel });
  };

  P._unsubscribeCore = function (channel) {
    var self = this, s = this._subs[channel];
    delete this._subs[channel]; delete this._pos.chans[channel]; delete this._replay[channel];
    this._save();
    if (s) s.waiters.forEach(function (w) { w.reject(new Error('unsubscribed')); });
    if (this.state !== 'connected') return Promise.resolve({ type: 'hub:unsubscribed', channel: channel });
    var p = new Promise(function (resolve, reject) {
      (self._unsubs[channel] = self._unsubs[channel] || []).push({ resolve: resolve, reject: reject });
    });
    this._send({ type: 'unsubscribe', channel: channel });
    p.catch(function () {});
    return p;
  };

  P.subscriptions = function () { return Object.keys(this.shared ? this._mine : this._subs); };

  // Client publish (only where the hub's namespace allows it). Resolves on hub:published.
  P.publish = function (channel, event, data, message) {
    if (this.shared && !this.leader) {
      return this._request({ op: 'pub', ch: channel, event: event, data: data, message: message });
    }
    return this._publishCore(channel, event, data, message);
  };

  P._publishCore = function (channel, event, data, message) {
    var self = this;
    var msg = { type: 'publish', channel: channel, event: event };
    if (message != null) msg.message = message;
    if (data !== undefined) msg.data = data;
    var p = new Promise(function (resolve, reject) {
      if (!self._send(msg)) return reject(new Error('not connected'));
      self._publishes.push({ channel: channel, resolve: resolve, reject: reject });
    });
    p.catch(function () {});
    return p;
  };

  // Requests in flight when the connection drops: publishes and unsubscribes fail; pending
  // subscriptions stay (they are sent again on reconnect) unless close() was called.
  P._failPending = function (err, keepSubs) {
    var ps = this._publishes; this._publishes = [];
    ps.forEach(function (p) { p.reject(err); });
    for (var ch in this._unsubs) this._unsubs[ch].forEach(function (w) { w.resolve({ type: 'hub:unsubscribed', channel: ch }); });
    this._unsubs = {};
    if (keepSubs) return;
    for (ch in this._subs) {
      var w = this._subs[ch].waiters; this._subs[ch].waiters = [];
      w.forEach(function (x) { x.reject(err); });
    }
  };

  // ---- acks, timers, persistence --------------------------------------------------------
  P._queueAck = function (id) {
    var self = this;
    this._acks.push(String(id));
    if (!this._timers.ack) this._timers.ack = setTimeout(function () { self._timers.ack = null; self._flushAcks(); }, this.ackBatchMs);
  };

  // Send queued acks, split so that no frame exceeds the hub's frame-size limit.
  P._flushAcks = function () {
    var ids = [], size = 23;                 // {"type":"ack","ids":[]}
    while (this._acks.length) {
      var id = this._acks[0], add = JSON.stringify(id).length + 1;
      if (ids.length && size + add > MAX_FRAME) { this._send({ type: 'ack', ids: ids }); ids = []; size = 23; }
      ids.push(this._acks.shift()); size += add;
    }
    if (ids.length) this._send({ type: 'ack', ids: ids });
  };

  P._stableTimer = function () {
    var self = this;
    clearTimeout(this._timers.stable);
    this._timers.stable = setTimeout(function () { self._attempt = 0; }, this.stableMs);
  };

  // With getToken and a JWT carrying `exp`: send a fresh token (`auth`) 30 s before it expires.
  P._refreshTimer = function () {
    var self = this, exp = this.getToken && this.token && jwtExp(this.token);
    clearTimeout(this._timers.refresh);
    if (!exp) return;
    var ms = Math.max(1000, exp * 1000 - Date.now() - 30000);
    this._timers.refresh = setTimeout(async function () {
      try {
        var t = await self.getToken();
        if (t && t !== self.token) { self.token = t; self._send({ type: 'auth', token: t }); }
      } catch (e) { /* the hub closes with 4002; reconnect asks getToken again */ }
      self._refreshTimer();
    }, Math.min(ms, 0x7fffffff));
  };

  P._scheduleSave = function () {
    var self = this;
    if (this.storageKey && !this._timers.save) this._timers.save = setTimeout(function () { self._timers.save = null; self._save(); }, 250);
  };

  P._save = function () {
    if (!this.storageKey) return;
    try {
      root.sessionStorage.setItem(this.storageKey, JSON.stringify({ pos: this._pos, ids: this._recent }));
    } catch (e) { /* storage full or disabled: positions stay in memory */ }
  };

  P._load = function () {
    if (!this.storageKey) return;
    try {
      var s = JSON.parse(root.sessionStorage.getItem(this.storageKey) || 'null');
      if (!s) return;
      this._pos = { auto: s.pos && s.pos.auto || null, chans: s.pos && s.pos.chans || {} };
      this._recent = (s.ids || []).slice(-RECENT_IDS);
      this._recentSet = new Set(this._recent);
    } catch (e) { /* ignore a corrupt entry */ }
  };

  // ---- Web Push (docs/PUSH.md) -----------------------------------------------------------
  // The hub's HTTP base from its WebSocket URL (ws://host/ws -> http://host).
  P._httpBase = function () {
    var u = new URL(this.url, root.location && root.location.href);
    u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
    return u.origin + u.pathname.replace(/\/ws\/?$/, '');
  };

  function keyBytes(b64) {
    var s = atob(b64.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((b64.length + 3) % 4));
    var out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  // Asks permission, subscribes with the hub's VAPID key and registers the subscription with the
  // hub for this user (the token's `sub`). Resolves to the PushSubscription.
  P.enablePush = async function (opts) {
    opts = opts || {};
    var nav = root.navigator;
    if (!nav || !nav.serviceWorker || !root.PushManager) throw new Error('this browser has no Web Push');
    if (root.Notification && root.Notification.permission !== 'granted') {
      var perm = await root.Notification.requestPermission();
      if (perm !== 'granted') throw new Error('notifications not allowed (' + perm + ')');
    }
    await nav.serviceWorker.register(opts.serviceWorker || '/wshub-sw.js');
    var reg = await nav.serviceWorker.ready;
    var base = this._httpBase();
    var r = await fetch(base + '/push/vapid-public-key');
    if (!r.ok) throw new Error('GET /push/vapid-public-key: HTTP ' + r.status);
    var key = keyBytes((await r.json()).public_key);
    var sub = await reg.pushManager.getSubscription();
    // A subscription made with another key (the hub's key changed) cannot be used: renew it.
    if (sub && sub.options && sub.options.applicationServerKey) {
      var old = new Uint8Array(sub.options.applicationServerKey);
      if (old.length !== key.length || old.some(function (b, i) { return b !== key[i]; })) { await sub.unsubscribe(); sub = null; }
    }
    if (!sub) sub = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    var token = this.getToken ? await this.getToken() : this.token;
    r = await fetch(base + '/push/subscriptions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + token },
      body: JSON.stringify(sub.toJSON()),
    });
    if (!r.ok) throw new Error('POST /push/subscriptions: HTTP ' + r.status + ' ' + (await r.text()));
    return sub;
  };

  // Removes this browser's subscription from the hub and from the push service.
  P.disablePush = async function () {
    var nav = root.navigator;
    var reg = nav && nav.serviceWorker && await nav.serviceWorker.getRegistration();
    var sub = reg && await reg.pushManager.getSubscription();
    if (!sub) return false;
    var token = this.getToken ? await this.getToken() : this.token;
    await fetch(this._httpBase() + '/push/subscriptions', {
      method: 'DELETE',
      headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + token },
      body: JSON.stringify({ endpoint: sub.endpoint }),
    });
    return sub.unsubscribe();
  };

  // ---- tabs: one socket per browser -----------------------------------------------------
  // The tabs of one origin that use the same hub URL elect a leader: the holder of the Web Lock
  // "wshub:<url>" (browsers without Web Locks, e.g. on insecure origins: the oldest tab that
  // announces itself over the BroadcastChannel). Only the leader opens the WebSocket. It posts
  // every new event, position and lifecycle event to the channel; every tab keeps the same
  // dedupe window and resume positions, so whichever tab takes over resumes where the last
  // leader stopped: replayed events it already has are acked again but not shown again.
  // Subscriptions are the union of the tabs' subscriptions, counted per tab; a tab that leaves
  // (pagehide, close(), or its tab lock released when it crashes) drops its share.
  //
  // Messages (field t): follower -> leader: hello {subs, notify, visible}, req {rid, op, ...},
  // bye; leader -> tabs: lead {since, state, ...}, ev {n, to}, pos {key, seq, epoch},
  // emit {type, arg}, res {to, rid, ok, val | err}, drop {ch, refused}.

  function hasLocks() { return !!(root.navigator && root.navigator.locks && root.navigator.locks.request); }
  function visible() { return !root.document || root.document.visibilityState !== 'hidden'; }
  function now() { return Date.now(); }

  P._joinTabs = function () {
    if (this._bc) return this;
    var self = this, name = 'wshub:' + this.url;
    this._wanted = true;
    this._bc = new root.BroadcastChannel(name);
    this._bc.onmessage = function (e) { self._onTabMsg(e.data || {}); };
    this._tabs = {};             // leader: tab id -> {seen, notify, visible}
    this._refs = {};             // leader: channel -> {tab id: true}
    this._leaderId = null;
    this._lastLead = 0;
    this._abort = typeof root.AbortController === 'function' ? new root.AbortController() : null;
    this._setState('connecting');
    if (hasLocks()) {
      var lockOpts = this._abort ? { signal: this._abort.signal } : {};
      // A lock per tab: the leader treats a tab whose lock is gone as closed (crash included).
      root.navigator.locks.request(name + ':tab:' + this._tab, lockOpts, function () {
        if (!self._bc) return null;
        self._hello();
        return new Promise(function (release) { self._releaseTabLock = release; });
      }).catch(function () {});
      root.navigator.locks.request(name, lockOpts, function () {
        if (!self._bc) return null;
        return new Promise(function (release) { self._releaseLeadLock = release; self._becomeLeader(); });
      }).catch(function () {});
    } else {
      this._lastLead = now() - TAB_TIMEOUT_MS + CLAIM_WAIT_MS;
      this._hello();
    }
    this._tick = setInterval(function () { self._heartbeat(); }, hasLocks() ? HEARTBEAT_MS : CLAIM_WAIT_MS);
    this._onPagehide = function () { self._leaveTabs(); };
    this._onVisibility = function () { if (!self.leader) self._hello(); };
    if (root.addEventListener) root.addEventListener('pagehide', this._onPagehide);
    if (root.document) root.document.addEventListener('visibilitychange', this._onVisibility);
    return this;
  };

  P._leaveTabs = function () {
    if (!this._bc) return;
    this._post({ t: 'bye', from: this._tab });
    this._stepDown();
    this._wanted = false;
    clearInterval(this._tick);
    if (this._abort) this._abort.abort();
    if (this._releaseTabLock) this._releaseTabLock();
    if (root.removeEventListener) root.removeEventListener('pagehide', this._onPagehide);
    if (root.document) root.document.removeEventListener('visibilitychange', this._onVisibility);
    this._bc.close();
    this._bc = null;
    var reqs = this._reqs; this._reqs = {};
    for (var rid in reqs) reqs[rid].reject(new Error('closed'));
    this._save();
  };

  P._post = function (m) {
    if (!this._bc) return;
    m.from = this._tab;
    try { this._bc.postMessage(m); } catch (e) { console.warn('wshub: cannot share', m.t, e); }
  };

  // What this tab wants, sent to the leader on join, on change and in answer to its heartbeat.
  P._hello = function () {
    var notify = [];
    for (var t in this._notify) if (this._notify[t].length) notify.push(t);
    this._post({ t: 'hello', subs: Object.keys(this._mine), notify: notify, visible: visible() });
  };

  P._becomeLeader = function () {
    if (!this._bc || this.leader) return;
    this.leader = true;
    this._leaderId = this._tab;
    this._since = now();
    this._tabs = {};
    this._refs = {};
    this._subs = {};
    if (this.state === 'connected') this._everConnected = true;
    for (var ch in this._mine) this._refAdd(this._tab, ch);
    // This tab's own requests that waited for a leader are now answered here.
    var reqs = this._reqs; this._reqs = {};
    for (var rid in reqs) this._leaderReq(this._tab, reqs[rid].q).then(reqs[rid].resolve, reqs[rid].reject);
    this._announce();
    this._connectCore();
  };

  // Leader gives up the socket (close, pagehide, or a second leader without Web Locks).
  P._stepDown = function () {
    if (!this.leader) return;
    this.leader = false;         // from here on, events stay in this tab
    this._closeCore();
    this._subs = {};
    this._refs = {};
    this._tabs = {};
    if (this._releaseLeadLock) { this._releaseLeadLock(); this._releaseLeadLock = null; }
  };

  P._announce = function () {
    this._post({ t: 'lead', since: this._since, state: this.state, clientId: this.clientId,
      user: this.user, epoch: this.epoch, channels: this.channels });
  };

  P._heartbeat = function () {
    var self = this;
    if (!this.leader) {
      // Without Web Locks a silent leader is presumed gone and the first tab to notice claims.
      if (!hasLocks() && now() - this._lastLead > TAB_TIMEOUT_MS) this._becomeLeader();
      return;
    }
    this._announce();
    if (hasLocks()) {
      root.navigator.locks.query().then(function (s) {
        var held = {};
        (s.held || []).forEach(function (l) { held[l.name] = true; });
        var prefix = 'wshub:' + self.url + ':tab:';
        for (var id in self._tabs) if (!held[prefix + id]) self._dropTab(id);
      }).catch(function () {});
    } else {
      for (var id in this._tabs) if (now() - this._tabs[id].seen > TAB_TIMEOUT_MS) this._dropTab(id);
    }
  };

  P._onTabMsg = function (m) {
    if (!this._bc || !m.from || m.from === this._tab) return;
    if (this.leader) return this._onFollowerMsg(m);
    switch (m.t) {
      case 'lead': return this._onLead(m);
      case 'ev': {
        var n = m.n, stream = n.channel || 'broadcast';
        this._setPos(isAuto(stream) ? AUTO : stream, n.seq, n.epoch || this.epoch);
        if (this._remember(n.id)) { this._peerIds.add(n.id); this._hand(n, m.to === this._tab); }
        return;
      }
      case 'pos': return this._setPos(m.key, m.seq, m.epoch);
      case 'bye':
        // Without Web Locks: the leader left; claim soon (jittered, so usually one tab claims).
        if (m.from === this._leaderId && !hasLocks()) {
          this._leaderId = null;
          this._lastLead = now() - TAB_TIMEOUT_MS + Math.random() * CLAIM_WAIT_MS;
        }
        return;
      case 'emit':
        if (m.type === 'state') this.state = m.arg;
        if (m.type === 'hub:connected') this._learn(m.arg);
        return this._emitLocal(m.type, m.arg);
      case 'drop':
        delete this._pos.chans[m.ch]; delete this._replay[m.ch];
        if (m.refused) delete this._mine[m.ch];
        return this._scheduleSave();
      case 'res': {
        var r = m.to === this._tab && this._reqs[m.rid];
        if (!r) return;
        delete this._reqs[m.rid];
        if (m.ok) return r.resolve(m.val);
        if (r.q.op === 'sub') delete this._mine[r.q.ch];
        var err = new Error(m.err.message); err.code = m.err.code; err.frame = m.err.frame;
        return r.reject(err);
      }
    }
  };

  P._learn = function (m) {
    if (!m) return;
    this.clientId = m.client_id || m.clientId || null; this.user = m.user || null;
    this.epoch = m.epoch || null; this.channels = m.channels || [];
  };

  P._onLead = function (m) {
    this._lastLead = now();
    if (m.state === 'connected') this._learn(m);
    if (m.state) this._setState(m.state);
    if (m.from === this._leaderId) {
      if (!hasLocks()) this._hello();   // without Web Locks, answering proves this tab is alive
      return;
    }
    // A new leader: tell it what this tab wants, and send again what it never answered
    // (publishes fail: sending them twice could publish twice).
    this._leaderId = m.from;
    this._hello();
    for (var rid in this._reqs) {
      var r = this._reqs[rid];
      if (r.q.op === 'pub') { delete this._reqs[rid]; r.reject(new Error('connection closed (leader changed)')); }
      else this._post({ t: 'req', rid: +rid, q: r.q });
    }
  };

  P._onFollowerMsg = function (m) {
    var self = this;
    switch (m.t) {
      case 'hello': {
        var known = !!this._tabs[m.from], had = {}, ch;
        this._tabs[m.from] = { seen: now(), notify: m.notify || [], visible: !!m.visible };
        if (!known) this._announce();
        for (ch in this._refs) if (this._refs[ch][m.from]) had[ch] = true;
        (m.subs || []).forEach(function (c) { if (!had[c]) self._refAdd(m.from, c); delete had[c]; });
        for (ch in had) this._refDel(m.from, ch);
        return;
      }
      case 'req':
        if (this._tabs[m.from]) this._tabs[m.from].seen = now();
        return this._leaderReq(m.from, m.q).then(function (val) {
          self._post({ t: 'res', to: m.from, rid: m.rid, ok: true, val: val });
        }, function (e) {
          self._post({ t: 'res', to: m.from, rid: m.rid, ok: false,
            err: { message: String(e && e.message || e), code: e && e.code, frame: e && e.frame } });
        });
      case 'bye': return this._dropTab(m.from);
      case 'lead':
        // Two leaders (only without Web Locks): the younger one steps down.
        if (!hasLocks() && (m.since < this._since || (m.since === this._since && m.from < this._tab))) {
          this._stepDown();
          this._wanted = true;
          this._onLead(m);
        }
        return;
    }
  };

  P._leaderReq = function (tab, q) {
    if (q.op === 'sub') return this._refAdd(tab, q.ch);
    if (q.op === 'unsub') return this._refDel(tab, q.ch);
    if (q.op === 'pub') return this._publishCore(q.ch, q.event, q.data, q.message);
    return Promise.reject(new Error('unknown request ' + q.op));
  };

  // Follower: ask the leader; sent again to a new leader until answered (not publishes).
  P._request = function (q) {
    var self = this, rid = ++this._rid;
    if (q.op === 'pub' && this.state !== 'connected') return Promise.reject(new Error('not connected'));
    var p = new Promise(function (resolve, reject) { self._reqs[rid] = { q: q, resolve: resolve, reject: reject }; });
    this._post({ t: 'req', rid: rid, q: q });
    p.catch(function () {});
    return p;
  };

  // Leader: count a tab's share of a channel; the first share subscribes the socket.
  P._refAdd = function (tab, ch) {
    var self = this, r = this._refs[ch] || (this._refs[ch] = {});
    r[tab] = true;
    var p = this._subscribeCore(ch);
    p.catch(function (e) {
      if (!e || !e.frame || !self._refs[ch]) return;   // refused by the hub: nobody gets it
      delete self._refs[ch];
      delete self._mine[ch];
      self._post({ t: 'drop', ch: ch, refused: true });
    });
    return p;
  };

  // Leader: drop a tab's share; the last one unsubscribes the socket.
  P._refDel = function (tab, ch) {
    var r = this._refs[ch], done = Promise.resolve({ type: 'hub:unsubscribed', channel: ch });
    if (!r || !r[tab]) return done;
    delete r[tab];
    if (Object.keys(r).length) return done;
    delete this._refs[ch];
    this._post({ t: 'drop', ch: ch });
    return this._unsubscribeCore(ch);
  };

  P._dropTab = function (tab) {
    if (!this._tabs[tab] && tab !== this._tab) return;
    delete this._tabs[tab];
    for (var ch in this._refs) if (this._refs[ch][tab]) this._refDel(tab, ch);
  };

  // Leader: which tab runs onNotify for this event. A tab that gets the event and has a
  // handler for its type; visible tabs first, then this one, then any.
  P._notifyTab = function (n) {
    var stream = n.channel || 'broadcast', auto = isAuto(stream), refs = this._refs[stream] || {};
    var cands = [], type = n.type, id, t;
    var mine = (this._notify[type] || []).length || (this._notify['*'] || []).length;
    if (mine && (auto || this._mine[stream])) cands.push({ id: this._tab, visible: visible() });
    for (id in this._tabs) {
      t = this._tabs[id];
      if ((t.notify.indexOf(type) >= 0 || t.notify.indexOf('*') >= 0) && (auto || refs[id])) {
        cands.push({ id: id, visible: t.visible });
      }
    }
    for (var i = 0; i < cands.length; i++) if (cands[i].visible) return cands[i].id;
    return cands.length ? cands[0].id : null;
  };

  Wshub.isAutoStream = isAuto;
  root.Wshub = Wshub;
})(typeof globalThis !== 'undefined' ? globalThis : window);
