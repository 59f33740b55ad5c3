// Entry point of the group-call demo: the join form, the call's lifecycle (join, leave, resume
// on a new socket when the signalling socket drops, ICE restarts when the network changes, and
// rejoining with backoff when nothing else works), dispatching the server's signalling messages
// (control-api/PROTOCOL.md) to the other modules, and the call controls.
//
// Other modules, one job each: ui.js (page), media.js (devices), signalling.js (token and
// WebSocket), publish.js and subscribe.js (the two peer connections), tiles.js (the grid),
// stats.js (overlays), chat.js. Shared state lives in state.js; tests see it as
// `window.sfuDemo.state`.
//
// URL options: ?room=R&name=N&autojoin=1 joins at once; &role=viewer joins without publishing;
// &codec=vp8|h264|vp9|av1 picks the camera's codec; &svc=MODE (e.g. &codec=vp9&svc=L3T3_KEY, also
// with av1) sends the camera as one SVC encoding in that scalability mode instead of three
// simulcast layers (falling back to simulcast, with a console warning, if it cannot);
// &audio=opus|pcmu|pcma offers the microphone in that codec alone.

import { state, isCurrent } from './state.js';
import { ui, showBanner, hideBanner, setStatus, showView, initAudioUnlock, initLayout } from './ui.js';
import {
  getLocalMedia, chosenDevices, describeMediaError, startPreview, stopPreview, takePreview,
  initDevicePickers, fillDevicePickers,
} from './media.js';
import { Journal, Signalling, fetchDevToken, signallingUrl, tokenClaims } from './signalling.js';
import {
  setPublishHooks, startPublishing, onPublishAnswer, failPendingOffer, closePublishing, restartPublishIce,
  startScreenShare, stopScreenShare, setOwnMuted, onOwnTrackPublished, onOwnTrackMuted, onLayersWanted,
} from './publish.js';
import { setSubscribeHooks, onSubscribeOffer, closeSubscribing } from './subscribe.js';
import {
  addParticipant, removeParticipant, onTrackPublished, onTrackUnpublished, onTrackMuted,
  setSpeakers, clearRoom, renderLocal, onLayerState,
} from './tiles.js';
import { initStats, startStats, stopStats } from './stats.js';
import { setUpE2ee } from './e2ee.js';
import { initChat, listenForChat, appendChat, setChatEnabled, clearChat } from './chat.js';

window.sfuDemo = { state };

const MAX_BACKOFF_MS = 30_000;
/** From asking for a token to `joined`: longer means the server is not answering. */
const JOIN_TIMEOUT_MS = 15_000;
/** After this long in the room, the next drop starts the backoff from 1 s again. */
const STABLE_MS = 10_000;
/** How long after the socket dropped we try to resume on a new one; below the server's 20 s
 * grace (`--resume-grace`), after which we would have been removed anyway. */
const RESUME_WINDOW_MS = 15_000;
/** Delays between attempts to open a socket for a resume. */
const RESUME_RETRY_MS = [0, 500, 1000, 2000, 4000];
/** At most one ICE restart this often (a connection flapping between states asks repeatedly). */
const ICE_RESTART_EVERY_MS = 5_000;
/** A restarted connection not connected again after this long counts as failed (the server
 * keeps a connection whose network is down for about 30 s; a restart asked for during an
 * outage completes only once the signalling socket carries messages again). */
const ICE_RESTART_LIMIT_MS = 45_000;
const NAME_STORE = 'sfu-demo.name';

// ---------------------------------------------------------------------------------------------
// Join form. `?room=R&name=N&autojoin=1&role=viewer` fills it in and joins at once.
// ---------------------------------------------------------------------------------------------

function initJoinForm() {
  const params = new URLSearchParams(location.search);
  // A sign-in link (`sfu-server token --join-url`) carries the token in the fragment, which
  // never reaches a server log; take it and clean the address bar.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get('token')) {
    ui.tokenInput.value = fragment.get('token');
    history.replaceState(null, '', location.pathname + location.search);
  }
  ui.tokenInput.addEventListener('input', applyToken);
  ui.roomInput.value = params.get('room') ?? '';
  ui.nameInput.value = params.get('name') ?? localStorage.getItem(NAME_STORE) ?? '';
  ui.viewerInput.checked = params.get('role') === 'viewer';
  if (ui.viewerInput.checked) ui.viewerInput.dispatchEvent(new Event('change'));

  ui.joinForm.addEventListener('submit', (event) => {
    event.preventDefault();
    startJoin();
  });

  applyToken();
  if (params.get('autojoin') === '1' && ui.roomInput.value && ui.nameInput.value) {
    startJoin();
  } else {
    fillDevicePickers().then(() => startPreview());
  }
}

/** A token in the form fixes the room and the identity (and names us, unless we say). */
function applyToken() {
  const token = ui.tokenInput.value.trim();
  const claims = token ? tokenClaims(token) : null;
  ui.roomInput.readOnly = Boolean(claims?.room);
  ui.tokenInfo.hidden = !token;
  if (!token) return;
  if (!claims) {
    ui.tokenInfo.textContent = 'This does not look like an access token.';
    return;
  }
  if (claims.room) ui.roomInput.value = claims.room;
  if (claims.name && !ui.nameInput.value) ui.nameInput.value = claims.name;
  const expired = claims.exp && claims.exp * 1000 < Date.now();
  ui.tokenInfo.textContent = expired
    ? 'This token has expired: ask for a new link.'
    : `Signed in as ${claims.identity}${claims.room ? ` for room “${claims.room}”` : ''}.`;
}

/** A random identity for tokens: identities must be unique in a room, names need not be. */
function randomIdentity() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return 'user-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function startJoin() {
  const room = ui.roomInput.value.trim();
  const displayName = ui.nameInput.value.trim();
  if (!room || !displayName) {
    showBanner('Enter a room name and your name.');
    return;
  }
  if (state.phase !== 'idle') return;
  localStorage.setItem(NAME_STORE, displayName);
  hideBanner();
  state.token = ui.tokenInput.value.trim();
  state.identity = tokenClaims(state.token)?.identity || state.identity || randomIdentity();
  Object.assign(state, {
    room, displayName, viewer: ui.viewerInput.checked, phase: 'connecting',
    leaving: false, everJoined: false, reconnectAttempts: 0, mediaEverConnected: false, mediaFailures: 0,
    resumes: 0, iceRestarts: 0, lastIceRestart: 0, messageCounts: {}, redirectUrl: null, redirects: 0,
    alternates: [], alternateTurn: 0, homeDown: false, joinToken: null,
  });
  ui.joinButton.disabled = true;

  try {
    // With `?e2ee=PASSPHRASE`, media is encrypted in this page (the key is derived first).
    await setUpE2ee(new URLSearchParams(location.search).get('e2ee'));
    if (state.viewer) {
      stopPreview();
    } else {
      let stream = takePreview();
      let error = null;
      if (!stream) ({ stream, error } = await getLocalMedia(chosenDevices()));
      if (state.phase !== 'connecting') {
        stream?.getTracks().forEach((t) => t.stop());
        return;
      }
      state.localStream = stream;
      if (!stream) {
        state.viewer = true;
        showBanner(`${describeMediaError(error)} You joined as a viewer: the others cannot see or hear you.`);
      } else if (error) {
        const missing = stream.getVideoTracks().length ? 'microphone' : 'camera';
        showBanner(`${describeMediaError(error)} You joined without a ${missing}.`, 'info');
      }
    }
    enterCallView();
    await connect();
  } catch (err) {
    endCall(`Could not join: ${err.message ?? err}`);
  }
}

function enterCallView() {
  ui.roomName.textContent = state.room;
  document.title = `${state.room} · SFU call`;
  showView(true);
  renderLocal();
  updateControls();
  setChatEnabled(false);
}

// ---------------------------------------------------------------------------------------------
// Connection lifecycle: connect, connection lost -> reconnect with backoff, end of the call.
// ---------------------------------------------------------------------------------------------

/**
 * Cluster mode: where to join other than this page's server: the node hosting the room (as
 * `room_elsewhere` said), or, once this page's server is gone, the other nodes in turn.
 */
function clusterTarget() {
  if (state.redirectUrl) return state.redirectUrl;
  if (!state.homeDown || !state.alternates.length) return null;
  return state.alternates[state.alternateTurn++ % state.alternates.length];
}

/** Gets a token (a fresh one from this page's server) and opens the signalling socket; `join` is sent once it is open. */
async function connect() {
  const session = ++state.session;
  setStatus(state.everJoined ? 'Reconnecting…' : 'connecting…', state.everJoined ? 'bad' : 'busy');
  const target = clusterTarget();
  // Another node takes the token we joined with (the cluster shares its keys).
  const fetched = state.token || (target && state.joinToken)
    ? { token: state.token || state.joinToken, wsUrl: signallingUrl() }
    : await fetchDevToken(state.room, state.identity, state.displayName, state.viewer);
  const { token } = fetched;
  state.joinToken = token;
  const wsUrl = target ?? fetched.wsUrl;
  if (!isCurrent(session)) return;
  state.journal = new Journal();
  state.resumeToken = null;
  const signalling = new Signalling(wsUrl, {
    journal: state.journal,
    onOpen: () => {
      setStatus(state.everJoined ? 'Reconnecting…' : 'joining…', state.everJoined ? 'bad' : 'busy');
      signalling.sendUnnumbered({ type: 'join', token });
    },
    onMessage: (msg) => {
      if (isCurrent(session)) handleMessage(msg, session);
    },
    onClose: ({ code, reason, opened }) => {
      if (!isCurrent(session) || state.leaving || state.signalling !== signalling) return;
      const why = `code ${code}${reason ? `: ${reason}` : ''}`;
      if (state.phase === 'joined' && state.resumeToken) {
        signallingLost(`the signalling connection closed (${why})`);
      } else if (state.everJoined) {
        // A server that does not even accept the socket is gone: in cluster mode, try the others.
        if (!opened && !target) state.homeDown = true;
        connectionLost(`the signalling connection closed (${why})`);
      } else if (!opened) {
        endCall(`Could not connect to the signalling server at ${wsUrl} (${why}).`);
      } else {
        endCall(`The server closed the connection before we joined (${why}).`);
      }
    },
  });
  state.signalling = signalling;
  setTimeout(() => {
    if (!isCurrent(session) || state.phase === 'joined' || state.leaving) return;
    const why = `the server did not answer within ${JOIN_TIMEOUT_MS / 1000} s`;
    if (state.everJoined) connectionLost(why);
    else endCall(`Could not join: ${why}.`);
  }, JOIN_TIMEOUT_MS);
}

/**
 * The signalling socket dropped while we were in the room: the server keeps our session (and
 * our media flowing) for a grace period. Open a new socket and `resume` on it, retrying for
 * up to RESUME_WINDOW_MS; the peer connections stay as they are.
 */
function signallingLost(reason) {
  state.phase = 'resuming';
  state.resumeDeadline = Date.now() + RESUME_WINDOW_MS;
  setStatus('Reconnecting…', 'bad');
  console.info(`${reason}; resuming the session on a new socket`);
  openResumeSocket(state.session, reason, 0);
}

function openResumeSocket(session, reason, attempt) {
  if (!isCurrent(session) || state.phase !== 'resuming' || state.leaving) return;
  if (Date.now() > state.resumeDeadline) {
    return connectionLost(`${reason}; could not resume the session`);
  }
  const previous = state.signalling;
  const signalling = new Signalling(previous?.url ?? signallingUrl(), {
    journal: state.journal,
    onOpen: () => signalling.sendUnnumbered({
      type: 'resume', token: state.resumeToken, last_seq: state.journal.lastReceived,
    }),
    onMessage: (msg) => {
      if (isCurrent(session) && state.signalling === signalling) handleMessage(msg, session);
    },
    onClose: ({ code, reason: closeReason, opened }) => {
      if (!isCurrent(session) || state.leaving || state.signalling !== signalling) return;
      const why = `the signalling connection closed (code ${code}${closeReason ? `: ${closeReason}` : ''})`;
      if (state.phase === 'joined') return signallingLost(why);
      // Cluster mode: a server that refuses connections twice is gone with our session; the
      // room moves to another node, so join again rather than keep trying to resume.
      if (!opened && state.alternates.length && attempt >= 1) {
        return connectionLost(`${reason}; its server is gone`, { soon: true });
      }
      const delay = RESUME_RETRY_MS[Math.min(attempt + 1, RESUME_RETRY_MS.length - 1)];
      setTimeout(() => openResumeSocket(session, reason, attempt + 1), delay);
      return undefined;
    },
  });
  previous?.replaceWith(signalling);
  previous?.close();
  state.signalling = signalling;
  return undefined;
}

/** The session carries on on the new socket: send what the server did not handle, restart ICE. */
function onResumed(msg) {
  if (state.phase !== 'resuming') return;
  state.phase = 'joined';
  state.resumes += 1;
  for (const sent of state.journal.unhandled(Number(msg.last_seq) || 0)) state.signalling.sendUnnumbered(sent);
  setStatus('connected', 'ok');
  hideBanner();
  // The socket dropped: the network may have changed under the media connections too.
  restartIce('the session resumed');
}

/**
 * Restarts ICE on both media connections (the network changed): a new publish offer with new
 * credentials, and `restart_ice` for the server's subscribe offer. If a connection is not
 * connected again within ICE_RESTART_LIMIT_MS, it has failed.
 */
function restartIce(reason) {
  if (state.phase !== 'joined') return;
  const now = Date.now();
  if (now - state.lastIceRestart < ICE_RESTART_EVERY_MS) return;
  state.lastIceRestart = now;
  state.iceRestarts += 1;
  console.info(`restarting ICE: ${reason}`);
  const session = state.session;
  restartPublishIce(session);
  if (state.subPc) state.signalling?.send({ type: 'restart_ice' });
  setTimeout(() => {
    if (!isCurrent(session) || state.phase !== 'joined') return;
    for (const [which, pc] of [['publish', state.pubPc], ['subscribe', state.subPc]]) {
      // Connected again at some point since the restart: a later outage is not this
      // restart's failure (it restarts ICE itself).
      const back = (state.connectedAt[which] ?? 0) >= now || pc?.connectionState === 'connected';
      if (pc && !back) {
        mediaFailed(`the ${which} connection did not come back after an ICE restart`, pc);
        return;
      }
    }
  }, ICE_RESTART_LIMIT_MS);
}

/**
 * A media connection lost its path (`disconnected`) or gave up (`failed`): restart ICE once
 * the call has had media (a connection that never got through is a blocked network).
 */
function iceTrouble(which, pc) {
  if (!state.mediaEverConnected) {
    if (pc.connectionState === 'failed') mediaFailed(`the ${which} connection failed (ICE/DTLS)`, pc);
    return undefined;
  }
  return restartIce(`the ${which} connection is ${pc.iceConnectionState}`);
}

/**
 * The connection dropped (`media_closed`, a failed ICE restart, no resume): tear down both peer
 * connections and the socket, wait (1 s, 2 s, 4 s... up to 30 s), then get a new token, rejoin
 * and republish. Local media and the chat log stay.
 */
/**
 * A media connection failed. If media never got through in this call while signalling works,
 * the network blocks it: say so, and what was tried, instead of reconnecting forever.
 */
function mediaFailed(reason, pc) {
  // Once through is not proof (the server may have restarted): the second failure is.
  state.mediaFailures += 1;
  console.info(`media failed: ${reason}`);
  if (state.mediaEverConnected || state.mediaFailures < 2) return connectionLost(reason);
  const sdp = pc?.remoteDescription?.sdp ?? '';
  const tried = ['UDP'];
  if (/tcptype passive/i.test(sdp)) tried.push('TCP (ICE-TCP)');
  if (state.iceServers.length) tried.push('the TURN relay');
  const list = tried.length > 1 ? `${tried.slice(0, -1).join(', ')} and ${tried.at(-1)}` : tried[0];
  return endCall(`Connected to the server, but audio and video cannot get through: this network ` +
    `seems to block the media (tried ${list}). Try another network, or ask the server's operator ` +
    `${state.iceServers.length ? 'to check the TURN relay' : 'to set up a TURN relay'}.`);
}

/** Most `room_elsewhere` hops one join follows (one is the rule; more means a loop). */
const MAX_REDIRECTS = 3;

/** Joins again at `url`, the node that hosts the room. */
function followRedirect(url) {
  console.info(`the room is hosted by another server: ${url}`);
  state.redirects += 1;
  state.redirectUrl = url;
  dropConnection();
  state.phase = state.everJoined ? 'reconnecting' : 'connecting';
  connect().catch((err) => endCall(`Could not join: ${err.message ?? err}`));
}

/**
 * `soon`: the room is moving between the cluster's nodes (its node just died); try again in a
 * second rather than backing off, as the next node takes it over within seconds.
 */
function connectionLost(reason, { soon = false } = {}) {
  if (state.phase === 'idle' || state.leaving || state.reconnectTimer) return;
  console.info(`connection lost: ${reason}`);
  // A node we were sent to that cannot be reached is one that just died; and with this page's
  // server gone, the other nodes are tried one a second.
  soon ||= state.redirectUrl !== null || (state.homeDown && state.alternates.length > 0);
  dropConnection();
  state.redirectUrl = null;
  state.redirects = 0;
  state.phase = 'reconnecting';
  const delay = soon ? 1000 : Math.min(1000 * 2 ** state.reconnectAttempts, MAX_BACKOFF_MS);
  if (!soon) state.reconnectAttempts++;
  setStatus('Reconnecting…', 'bad');
  showBanner(`Connection lost: ${reason}. Reconnecting in ${delay / 1000} s…`, 'info');
  state.reconnectTimer = setTimeout(() => {
    state.reconnectTimer = null;
    connect().catch((err) => {
      // No token from this page's server: it is gone (cluster mode: the others are tried).
      state.homeDown = true;
      if (state.phase === 'reconnecting') connectionLost(err.message ?? String(err));
    });
  }, delay);
}

/** Closes the socket and both peer connections and forgets the room; keeps local media. */
function dropConnection() {
  state.session++;
  state.signalling?.close();
  state.signalling = null;
  closePublishing();
  closeSubscribing();
  clearRoom();
  stopStats();
  setChatEnabled(false);
  state.participantId = null;
  delete ui.localTile.dataset.participantId;
}

/** Ends the call and shows the join form again, with `message` (if any) in the banner. */
function endCall(message, kind = 'error') {
  console.info(`call ended${message ? `: ${message}` : ''}`);
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  dropConnection();
  state.localStream?.getTracks().forEach((t) => t.stop());
  state.screenStream?.getTracks().forEach((t) => t.stop());
  Object.assign(state, {
    phase: 'idle', leaving: false, everJoined: false, localStream: null, screenStream: null,
    micMuted: false, camMuted: false, reconnectAttempts: 0,
  });
  clearChat();
  renderLocal();
  document.title = 'SFU group call demo';
  ui.joinButton.disabled = false;
  showView(false);
  if (message) showBanner(message, kind);
  startPreview();
}

function leave() {
  if (state.phase === 'idle') return;
  state.leaving = true;
  const signalling = state.signalling;
  signalling?.send({ type: 'leave' });
  // The server replies `left` and closes the socket; give it a second, then close it ourselves.
  state.signalling = null;
  endCall(null);
  if (signalling) setTimeout(() => signalling.close(1000, 'left'), 1000);
}

// ---------------------------------------------------------------------------------------------
// Server messages.
// ---------------------------------------------------------------------------------------------

function handleMessage(msg, session) {
  state.messageCounts[msg.type] = (state.messageCounts[msg.type] ?? 0) + 1;
  switch (msg.type) {
    case 'joined': return onJoined(msg, session);
    case 'resumed': return onResumed(msg);
    case 'publish_answer': return onPublishAnswer(msg);
    case 'subscribe_offer': return onSubscribeOffer(msg, session);
    case 'participant_joined': return addParticipant(msg.participant);
    case 'participant_left': return removeParticipant(msg.participant);
    case 'track_published':
      if (!msg.track?.id) return undefined;
      return msg.track.participant === state.participantId ? onOwnTrackPublished(msg.track) : onTrackPublished(msg.track);
    case 'track_unpublished':
      return msg.participant === state.participantId ? undefined : onTrackUnpublished(msg.track, msg.participant);
    case 'track_muted':
      return msg.participant === state.participantId ? onOwnTrackMuted(msg.track, msg.muted) : onTrackMuted(msg.track, msg.participant, msg.muted);
    case 'active_speakers': return setSpeakers(msg.speakers);
    case 'layer_state': return onLayerState(msg);
    case 'layers_wanted': return onLayersWanted(msg);
    case 'error': return onServerError(msg);
    case 'left': return onLeft(msg.reason);
    case 'pong': return undefined;
    default:
      console.warn(`ignoring unknown signalling message type "${msg.type}"`);
      return undefined;
  }
}

function onJoined(msg, session) {
  const wasReconnecting = state.phase === 'reconnecting';
  Object.assign(state, {
    phase: 'joined',
    everJoined: true,
    participantId: msg.participant?.id ?? null,
    iceServers: Array.isArray(msg.ice_servers) ? msg.ice_servers : [],
    resumeToken: typeof msg.resume_token === 'string' ? msg.resume_token : null,
    // Cluster mode: the other nodes (where the room goes if this one dies).
    alternates: Array.isArray(msg.alternates) ? msg.alternates.filter((u) => typeof u === 'string') : [],
  });
  ui.localTile.dataset.participantId = state.participantId ?? '';
  console.info(`joined room ${state.room} as ${state.participantId}`);
  setStatus('connected', 'ok');
  if (wasReconnecting) {
    hideBanner();
    appendChat('', 'Reconnected.', 'notice');
  }
  setTimeout(() => {
    if (isCurrent(session)) state.reconnectAttempts = 0;
  }, STABLE_MS);

  for (const participant of msg.participants ?? []) addParticipant(participant);
  for (const track of msg.tracks ?? []) {
    if (track?.id && track.participant !== state.participantId) onTrackPublished(track);
  }
  renderLocal();
  updateControls();
  startStats();
  if (!state.viewer && state.localStream) startPublishing(session);
}

/** Join refusals end the call with a sentence; `media_closed` reconnects; the rest is shown. */
function onServerError(msg) {
  const detail = msg.message ?? 'no details';
  state.errors.push({ code: msg.code, message: detail });
  if (state.errors.length > 20) state.errors.shift();
  const joinedNow = state.phase === 'joined';
  switch (msg.code) {
    case 'bad_token':
      return endCall(`The server refused the access token: ${detail}.`);
    case 'room_full':
      return endCall(`The room “${state.room}” is full. Try again later, or join another room.`);
    case 'server_full':
      return endCall(`This server is full (${detail}). Try again in a moment.`);
    case 'unknown_room':
      return endCall(`There is no room “${state.room}” on this server, and it does not create rooms on join.`);
    case 'permission_denied':
      if (!joinedNow) return endCall(`You may not join “${state.room}”: ${detail}.`);
      failPendingOffer(detail);
      return showBanner(`Not allowed: ${detail}.`);
    case 'room_elsewhere':
      // Cluster mode: the room is on another node; join there with the same token.
      if (!joinedNow && typeof msg.url === 'string' && state.redirects < MAX_REDIRECTS) return followRedirect(msg.url);
      return endCall(`The room “${state.room}” is on another server that could not be joined (${detail}).`);
    case 'cluster_unavailable':
      return connectionLost(`the room is moving to another server (${detail})`, { soon: true });
    case 'resume_failed':
      return connectionLost(`could not resume the session (${detail})`);
    case 'media_closed':
      // The server gave up on a connection: before media ever flowed, the network blocks it.
      return mediaFailed(detail, state.subPc ?? state.pubPc);
    case 'unknown_track':
      // A request about a track that left meanwhile (a tile's size sent as it went away).
      return console.info(`ignoring: ${detail}`);
    case 'bad_sdp':
      failPendingOffer(detail);
      return showBanner(`Server error: ${detail} (${msg.code}).`);
    default:
      return showBanner(`Server error: ${detail} (${msg.code ?? 'no code'}).`);
  }
}

function onLeft(reason) {
  if (state.leaving) return;
  endCall(`The call ended: ${reason ?? 'closed by the server'}.`, 'info');
}

// ---------------------------------------------------------------------------------------------
// Controls: mute mic, stop camera, share screen, leave.
// ---------------------------------------------------------------------------------------------

function updateControls() {
  const stream = state.localStream;
  const publishing = !state.viewer && !!stream;
  ui.micButton.hidden = !stream?.getAudioTracks().length;
  ui.camButton.hidden = !stream?.getVideoTracks().length;
  ui.screenButton.hidden = !publishing || !navigator.mediaDevices?.getDisplayMedia;
  ui.micButton.textContent = state.micMuted ? 'Unmute mic' : 'Mute mic';
  ui.camButton.textContent = state.camMuted ? 'Start camera' : 'Stop camera';
  ui.screenButton.textContent = state.screenStream ? 'Stop sharing' : 'Share screen';
  ui.micButton.setAttribute('aria-pressed', String(state.micMuted));
  ui.camButton.setAttribute('aria-pressed', String(state.camMuted));
  ui.screenButton.setAttribute('aria-pressed', String(!!state.screenStream));
}

function toggleScreenShare() {
  const action = state.screenStream ? stopScreenShare() : startScreenShare();
  action.catch((err) => {
    if (err?.name === 'NotAllowedError') return; // the user closed the picker
    showBanner(`Screen sharing failed: ${err.message ?? err}`);
  });
}

function initControls() {
  ui.micButton.addEventListener('click', () => setOwnMuted('audio', !state.micMuted));
  ui.camButton.addEventListener('click', () => setOwnMuted('video', !state.camMuted));
  ui.screenButton.addEventListener('click', toggleScreenShare);
  ui.leaveButton.addEventListener('click', leave);
  ui.bannerClose.addEventListener('click', hideBanner);
  initAudioUnlock();

  setPublishHooks({
    onFailed: mediaFailed,
    onIceTrouble: iceTrouble,
    onChatReady: setChatEnabled,
    onError: (text) => showBanner(text),
    onChange: () => {
      updateControls();
      renderLocal();
    },
  });
  setSubscribeHooks({
    onIceTrouble: iceTrouble,
    onDataChannel: listenForChat,
    onError: (text) => showBanner(text),
  });
}

// ---------------------------------------------------------------------------------------------
// Boot.
// ---------------------------------------------------------------------------------------------

window.addEventListener('unhandledrejection', (event) => {
  showBanner(`Unexpected error: ${event.reason?.message ?? event.reason}`);
});
// Closing the tab: say goodbye, so the others see us leave at once.
window.addEventListener('pagehide', () => state.signalling?.send({ type: 'leave' }));

initLayout();
initControls();
initChat();
initStats();
initDevicePickers();
initJoinForm();
