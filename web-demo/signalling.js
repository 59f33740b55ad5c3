// The signalling connection (control-api/PROTOCOL.md): getting a dev-mode token, the WebSocket
// with its JSON messages and keep-alive pings, and trickling our ICE candidates once the
// matching offer or answer has been sent. One `Signalling` per socket; a `Journal` per session
// numbers what we send and remembers what we received, so a session outlives its socket
// (`resume`).

const PING_EVERY_MS = 10_000;
/** No message at all (not even a `pong`) for this long means the connection is dead. */
const SILENCE_LIMIT_MS = 25_000;
const TOKEN_TIMEOUT_MS = 10_000;

/**
 * Gets an access token from the dev-mode endpoint (a viewer's may not publish). Resolves with
 * {token, wsUrl}.
 */
export async function fetchDevToken(room, identity, name, viewer = false) {
  const url = new URL('/dev/token', location.origin);
  const query = { room, identity, name };
  if (viewer) query.role = 'viewer';
  url.search = new URLSearchParams(query).toString();
  let response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(TOKEN_TIMEOUT_MS) });
  } catch (err) {
    throw new Error(`the server is unreachable (${err.message})`);
  }
  if (response.status === 404) {
    throw new Error('the server is not in dev mode (GET /dev/token returned 404). ' +
      'Start it in dev mode, or get a token from your application.');
  }
  if (!response.ok) {
    throw new Error(`GET /dev/token failed: HTTP ${response.status} ${await response.text()}`);
  }
  const body = await response.json();
  if (typeof body.token !== 'string') throw new Error('GET /dev/token returned no token');
  return { token: body.token, wsUrl: signallingUrl(body.ws_url) };
}

/**
 * What a token says about itself (its payload, not verified: the server does that): room,
 * identity and name. `null` if it is not a JWT.
 */
export function tokenClaims(token) {
  const payload = token.split('.')[1];
  if (!payload) return null;
  try {
    const json = atob(payload.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(payload.length / 4) * 4, '='));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(json, (c) => c.charCodeAt(0))));
    return { room: claims.video?.room ?? '', identity: claims.sub ?? '', name: claims.name ?? '', exp: claims.exp ?? 0 };
  } catch {
    return null;
  }
}

/** The WebSocket URL: the server's `ws_url` if given, else `ws(s)://<this host>/rtc`. */
export function signallingUrl(wsUrl) {
  const fallback = `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/rtc`;
  if (!wsUrl) return fallback;
  try {
    const url = new URL(wsUrl);
    // A server bound to every interface may advertise 0.0.0.0 / [::], which browsers can't dial.
    if (url.hostname === '0.0.0.0' || url.hostname === '[::]') url.hostname = location.hostname;
    return url.toString();
  } catch {
    return fallback;
  }
}

/** Client messages kept for sending again after a resume; more means we rejoin instead. */
const JOURNAL_LIMIT = 256;

/**
 * One session's numbering, across its sockets: every message we send (but `join`, `resume` and
 * `ping`) gets a `seq` and is kept until the server says it handled it (`resumed.last_seq`);
 * `lastReceived` is the highest `seq` the server sent us.
 */
export class Journal {
  constructor() {
    this.next = 1;
    this.kept = [];
    this.lastReceived = 0;
  }

  /** Numbers `msg` and keeps it; returns the numbered copy. */
  record(msg) {
    const numbered = { ...msg, seq: this.next++ };
    this.kept.push(numbered);
    if (this.kept.length > JOURNAL_LIMIT) this.kept.shift();
    return numbered;
  }

  /** A server message arrived. */
  received(msg) {
    if (Number.isSafeInteger(msg.seq) && msg.seq > this.lastReceived) this.lastReceived = msg.seq;
  }

  /** The server handled our messages up to `lastSeq`: the ones after it, to send again. */
  unhandled(lastSeq) {
    this.kept = this.kept.filter((m) => m.seq > lastSeq);
    return this.kept;
  }
}

export class Signalling {
  /**
   * Opens the socket. `onOpen()`, `onMessage(msg)` and `onClose({code, reason, opened})` are
   * called until `close()` is called; after that, nothing. Messages go through `journal`.
   */
  constructor(url, { onOpen, onMessage, onClose, journal }) {
    this.url = url;
    this.onClose = onClose;
    this.journal = journal;
    /** The socket that replaced this one after a resume (candidates go there). */
    this.successor = null;
    this.opened = false;
    this.closed = false;
    this.lastHeard = Date.now();
    this.candidates = {
      publish: { ready: false, queue: [] },
      subscribe: { ready: false, queue: [] },
    };

    const ws = new WebSocket(url);
    this.ws = ws;
    ws.addEventListener('open', () => {
      if (this.closed) return;
      this.opened = true;
      this.lastHeard = Date.now();
      this.pingTimer = setInterval(() => this.keepAlive(), PING_EVERY_MS);
      onOpen();
    });
    ws.addEventListener('message', (event) => {
      if (this.closed) return;
      this.lastHeard = Date.now();
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        console.warn('ignoring a non-JSON signalling message');
        return;
      }
      this.journal.received(msg);
      onMessage(msg);
    });
    ws.addEventListener('close', (event) => {
      if (this.closed) return;
      this.stop();
      onClose({ code: event.code, reason: event.reason, opened: this.opened });
    });
  }

  /**
   * Sends one message: numbered and kept in the journal, so that one sent while the socket is
   * down goes out after a resume.
   */
  send(msg) {
    this.sendUnnumbered(this.journal.record(msg));
  }

  /** Sends `msg` as it is, if the socket is open (`join`, `resume`, `ping`, resent messages). */
  sendUnnumbered(msg) {
    if (!this.closed && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  /** The socket that carries the session now (this one, or the one that resumed it). */
  current() {
    let signalling = this;
    while (signalling.successor) signalling = signalling.successor;
    return signalling;
  }

  /** After a resume on `next`: candidates not yet sent go there, and their state too. */
  replaceWith(next) {
    this.successor = next;
    for (const target of ['publish', 'subscribe']) {
      const mine = this.candidates[target];
      const theirs = next.candidates[target];
      theirs.ready = theirs.ready || mine.ready;
      theirs.queue.push(...mine.queue.splice(0));
    }
  }

  keepAlive() {
    if (Date.now() - this.lastHeard > SILENCE_LIMIT_MS) {
      // The network went away without the socket noticing: report it as closed now.
      this.stop();
      this.ws.close();
      this.onClose({ code: 4000, reason: 'no reply from the server', opened: true });
      return;
    }
    this.sendUnnumbered({ type: 'ping' });
  }

  /** Closes the socket; no callback is called any more. */
  close(code = 1000, reason = '') {
    if (this.closed) return;
    this.stop();
    try {
      this.ws.close(code, reason);
    } catch {
      this.ws.close();
    }
  }

  stop() {
    this.closed = true;
    clearInterval(this.pingTimer);
  }

  /** Sends `pc`'s ICE candidates as `candidate` messages for `target` ("publish" or "subscribe"). */
  trickle(pc, target) {
    let endSent = false;
    pc.addEventListener('icecandidate', (event) => {
      const candidate = event.candidate?.candidate ?? '';
      if (!candidate) {
        // End of candidates (null event, or an empty end-of-generation candidate): say it once.
        if (endSent) return;
        endSent = true;
      }
      const signalling = this.current();
      const slot = signalling.candidates[target];
      const msg = { type: 'candidate', target, candidate };
      if (slot.ready) signalling.send(msg);
      else slot.queue.push(msg);
    });
  }

  /** Call after the offer/answer for `target` was sent: sends the candidates held back so far. */
  flushCandidates(target) {
    const slot = this.candidates[target];
    slot.ready = true;
    for (const msg of slot.queue.splice(0)) this.send(msg);
  }
}
