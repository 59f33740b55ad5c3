// The signalling connection (control-api/PROTOCOL.md): getting a dev-mode token, the WebSocket
// with its JSON messages and keep-alive pings, and trickling our ICE candidates once the
// matching offer or answer has been sent. One `Signalling` per connection attempt.

const PING_EVERY_MS = 10_000;
/** No message at all (not even a `pong`) for this long means the connection is dead. */
const SILENCE_LIMIT_MS = 25_000;
const TOKEN_TIMEOUT_MS = 10_000;

/** Gets an access token from the dev-mode endpoint. Resolves with {token, wsUrl}. */
export async function fetchDevToken(room, identity, name) {
  const url = new URL('/dev/token', location.origin);
  url.search = new URLSearchParams({ room, identity, name }).toString();
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

export class Signalling {
  /**
   * Opens the socket. `onOpen()`, `onMessage(msg)` and `onClose({code, reason, opened})` are
   * called until `close()` is called; after that, nothing.
   */
  constructor(url, { onOpen, onMessage, onClose }) {
    this.url = url;
    this.onClose = onClose;
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
      onMessage(msg);
    });
    ws.addEventListener('close', (event) => {
      if (this.closed) return;
      this.stop();
      onClose({ code: event.code, reason: event.reason, opened: this.opened });
    });
  }

  /** Sends one message if the socket is open. */
  send(msg) {
    if (!this.closed && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  keepAlive() {
    if (Date.now() - this.lastHeard > SILENCE_LIMIT_MS) {
      // The network went away without the socket noticing: report it as closed now.
      this.stop();
      this.ws.close();
      this.onClose({ code: 4000, reason: 'no reply from the server', opened: true });
      return;
    }
    this.send({ type: 'ping' });
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
      const slot = this.candidates[target];
      const msg = { type: 'candidate', target, candidate };
      if (slot.ready) this.send(msg);
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
