// Browser side of the SFU group-call demo.
//
// Signalling follows control-api/PROTOCOL.md: one WebSocket carrying JSON messages tagged by
// `type`, and two RTCPeerConnections per participant:
//   - publish   (pubPc): we offer, the server answers; carries our mic, camera and `data` channel;
//   - subscribe (subPc): the server offers, we answer; carries every remote track and the
//     server's `data` channel with the room's chat messages.
//
// Plain ES module, no dependencies. Sections, in order: state, DOM helpers, join form,
// session (token + WebSocket), message dispatch, publishing, subscribing, remote tiles,
// chat, controls, teardown, boot.

// ---------------------------------------------------------------------------------------------
// State. Everything about the current session lives here; `window.sfuDemo.state` exposes it to
// tests (participantId, remoteParticipants, pubPc, subPc).
// ---------------------------------------------------------------------------------------------

const state = {
  /** Incremented on every join and teardown; async work from an older session checks it and stops. */
  session: 0,
  joined: false,
  /** True after the user pressed Leave, so the socket closing is not reported as an error. */
  leaving: false,
  /** The last `error` from the server in this session, quoted if the socket then closes. */
  lastServerError: null,
  ws: null,
  pingTimer: null,
  room: '',
  displayName: '',
  viewer: false,
  /** Our own participant id (`PA_...`), from `joined`. */
  participantId: null,

  // Publishing (owned by the "publishing" section).
  localStream: null,
  pubPc: null,
  /** Our `data` channel on the publish connection, used to send chat messages. */
  dataChannel: null,
  audioTransceiver: null,
  videoTransceiver: null,
  /** Our own mid -> track id, learned from `track_published` for our own tracks. */
  ownTrackIds: new Map(),
  micMuted: false,
  camMuted: false,

  // Subscribing (owned by the "subscribing" section).
  subPc: null,
  /** Subscribe-connection mid -> {mid, track, participant, kind}, from `subscribe_offer.tracks`. */
  subMids: new Map(),
  /** Subscribe offers are handled strictly one after the other on this promise chain. */
  subChain: Promise.resolve(),

  /** Our trickled ICE candidates wait here until the offer/answer they belong to was sent. */
  candidates: {
    publish: { ready: false, queue: [] },
    subscribe: { ready: false, queue: [] },
  },

  // Remote participants (owned by the "remote tiles" section).
  /** Participant id -> {id, identity, name, tile, videoEl, audioEl, tracks: Map(trackId -> MediaStreamTrack)}. */
  remoteParticipants: new Map(),
  /** Track id -> {id, participant, kind, muted}, from `joined.tracks`, `track_published`, `track_muted`. */
  trackInfo: new Map(),
};

window.sfuDemo = { state };

// ---------------------------------------------------------------------------------------------
// DOM helpers.
// ---------------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

const ui = {
  banner: $('banner'),
  bannerText: $('banner-text'),
  bannerClose: $('banner-close'),
  joinView: $('join-view'),
  joinForm: $('join-form'),
  joinButton: $('join-button'),
  roomInput: $('room-input'),
  nameInput: $('name-input'),
  viewerInput: $('viewer-input'),
  callView: $('call-view'),
  roomName: $('room-name'),
  connStatus: $('conn-status'),
  micButton: $('mic-button'),
  camButton: $('cam-button'),
  audioUnlockButton: $('audio-unlock-button'),
  leaveButton: $('leave-button'),
  tiles: $('tiles'),
  localTile: $('local-tile'),
  localVideo: $('local-video'),
  localName: $('local-name'),
  chatLog: $('chat-log'),
  chatForm: $('chat-form'),
  chatInput: $('chat-input'),
  chatSend: $('chat-send'),
  tileTemplate: $('tile-template'),
};

/** Shows a message in the banner at the top of the page. `kind` is 'error' or 'info'. */
function showBanner(text, kind = 'error') {
  ui.bannerText.textContent = text;
  ui.banner.dataset.kind = kind;
  ui.banner.hidden = false;
}

function hideBanner() {
  ui.banner.hidden = true;
  ui.bannerText.textContent = '';
}

function setStatus(text) {
  ui.connStatus.textContent = text;
}

/** Shows the join form or the call view. */
function showView(inCall) {
  ui.joinView.hidden = inCall;
  ui.callView.hidden = !inCall;
}

/** Starts playing a media element; autoplay refusals offer an "Enable audio" button instead of failing. */
function playMedia(el) {
  const p = el.play();
  if (!p) return;
  p.catch((err) => {
    if (err && err.name === 'NotAllowedError') ui.audioUnlockButton.hidden = false;
    // AbortError: the source changed before playback started; the new source plays instead.
  });
}

/** A random identity for the token: identities must be unique per room, names need not be. */
function randomIdentity() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return 'user-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// ---------------------------------------------------------------------------------------------
// Join form. `?room=R&name=N&autojoin=1&role=viewer` prefills it and joins at once.
// ---------------------------------------------------------------------------------------------

function initJoinForm() {
  const params = new URLSearchParams(location.search);
  ui.roomInput.value = params.get('room') ?? '';
  ui.nameInput.value = params.get('name') ?? '';
  ui.viewerInput.checked = params.get('role') === 'viewer';

  ui.joinForm.addEventListener('submit', (event) => {
    event.preventDefault();
    startJoin();
  });

  if (params.get('autojoin') === '1' && ui.roomInput.value && ui.nameInput.value) startJoin();
}

function startJoin() {
  const room = ui.roomInput.value.trim();
  const name = ui.nameInput.value.trim();
  if (!room || !name) {
    showBanner('Enter a room name and your name.');
    return;
  }
  join(room, name, ui.viewerInput.checked).catch((err) => {
    showBanner(`Could not join: ${err.message ?? err}`);
    teardown();
  });
}

// ---------------------------------------------------------------------------------------------
// Session: camera/mic, token, WebSocket.
// ---------------------------------------------------------------------------------------------

async function join(room, displayName, viewer) {
  hideBanner();
  ui.joinButton.disabled = true;
  const session = ++state.session;
  Object.assign(state, { room, displayName, viewer, leaving: false, joined: false, lastServerError: null });

  // Camera and microphone first, so a refused permission is reported before we enter the room.
  if (!viewer) {
    state.localStream = await getLocalMedia();
    if (session !== state.session) return;
    if (!state.localStream) {
      state.viewer = true;
    }
  }

  const { token, wsUrl } = await fetchDevToken(room, randomIdentity(), displayName);
  if (session !== state.session) return;

  enterCallView();
  connectSignalling(wsUrl, token, session);
}

/** Asks for camera and microphone; falls back to one of them, then to none (viewer). */
async function getLocalMedia() {
  if (!navigator.mediaDevices?.getUserMedia) {
    showBanner('Camera and microphone need a secure context (https or localhost); joining as a viewer.');
    return null;
  }
  const video = { width: { ideal: 1280 }, height: { ideal: 720 } };
  const attempts = [{ audio: true, video }, { audio: true }, { video }];
  let lastError = null;
  for (const constraints of attempts) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints);
    } catch (err) {
      lastError = err;
      if (err.name === 'NotAllowedError') break; // the user said no: don't ask again
    }
  }
  showBanner(`No camera or microphone (${lastError?.name ?? 'error'}: ${lastError?.message ?? ''}); joining as a viewer.`);
  return null;
}

/** Gets an access token from the dev-mode endpoint. Returns {token, wsUrl}. */
async function fetchDevToken(room, identity, name) {
  const url = new URL('/dev/token', location.origin);
  url.search = new URLSearchParams({ room, identity, name }).toString();
  let response;
  try {
    response = await fetch(url);
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

/** The WebSocket URL: the server's `ws_url` if given, else `ws(s)://<this host>/rtc`. */
function signallingUrl(wsUrl) {
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

function enterCallView() {
  ui.roomName.textContent = state.room;
  ui.localName.textContent = `${state.displayName} (you)`;
  setStatus('connecting…');
  showView(true);
  renderLocalTile();
  updateControls();
  setChatEnabled(false);
}

function connectSignalling(wsUrl, token, session) {
  const ws = new WebSocket(wsUrl);
  state.ws = ws;
  let opened = false;

  ws.addEventListener('open', () => {
    if (session !== state.session) return;
    opened = true;
    setStatus('joining…');
    send({ type: 'join', token });
    state.pingTimer = setInterval(() => send({ type: 'ping' }), 20000);
  });

  ws.addEventListener('message', (event) => {
    if (session !== state.session) return;
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      console.warn('ignoring a non-JSON signalling message');
      return;
    }
    handleMessage(msg, session);
  });

  ws.addEventListener('close', (event) => {
    if (session !== state.session) return;
    if (!state.leaving) showBanner(closeMessage(event, opened, wsUrl));
    teardown();
  });
}

/** What to tell the user when the signalling socket closed without them leaving. */
function closeMessage(event, opened, wsUrl) {
  const why = `code ${event.code}${event.reason ? `: ${event.reason}` : ''}`;
  if (!opened) return `Could not connect to the signalling server at ${wsUrl} (${why}).`;
  if (!state.joined) {
    return state.lastServerError
      ? `Could not join: ${state.lastServerError}`
      : `The server closed the connection before we joined (${why}).`;
  }
  return `Disconnected from the server (${why}).`;
}

/** Sends one signalling message if the socket is open. */
function send(msg) {
  if (state.ws?.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}

// ---------------------------------------------------------------------------------------------
// Message dispatch: one handler per server message type.
// ---------------------------------------------------------------------------------------------

function handleMessage(msg, session) {
  switch (msg.type) {
    case 'joined': return onJoined(msg, session);
    case 'publish_answer': return onPublishAnswer(msg, session);
    case 'subscribe_offer': return enqueueSubscribeOffer(msg, session);
    case 'participant_joined': return addParticipant(msg.participant);
    case 'participant_left': return removeParticipant(msg.participant);
    case 'track_published': return onTrackPublished(msg.track);
    case 'track_unpublished': return onTrackUnpublished(msg.track, msg.participant);
    case 'track_muted': return onTrackMuted(msg.track, msg.participant, msg.muted);
    case 'error': return onServerError(msg);
    case 'left': return onLeft(msg.reason);
    case 'pong': return undefined;
    default:
      console.warn(`ignoring unknown signalling message type "${msg.type}"`);
      return undefined;
  }
}

function onJoined(msg, session) {
  state.joined = true;
  state.participantId = msg.participant?.id ?? null;
  ui.localTile.dataset.participantId = state.participantId ?? '';
  setStatus('connected');
  for (const participant of msg.participants ?? []) addParticipant(participant);
  for (const track of msg.tracks ?? []) onTrackPublished(track);
  if (!state.viewer) {
    startPublishing(session).catch((err) => {
      if (session === state.session) showBanner(`Publishing failed: ${err.message ?? err}`);
    });
  }
}

function onServerError(msg) {
  state.lastServerError = `${msg.message ?? 'unknown error'} (${msg.code ?? 'no code'})`;
  showBanner(`Server error: ${state.lastServerError}`);
}

function onTrackPublished(track) {
  if (!track?.id) return;
  if (track.participant === state.participantId) {
    // Our own track: remember which of our mids it is, so mute messages can name it.
    state.ownTrackIds.set(String(track.mid), track.id);
    syncOwnMute(track.id, track.muted);
    return;
  }
  state.trackInfo.set(track.id, { id: track.id, participant: track.participant, kind: track.kind, muted: !!track.muted });
  const participant = state.remoteParticipants.get(track.participant);
  if (participant) renderTile(participant);
}

function onTrackUnpublished(trackId, participantId) {
  state.trackInfo.delete(trackId);
  for (const [mid, info] of state.subMids) {
    if (info.track === trackId) state.subMids.delete(mid);
  }
  const participant = state.remoteParticipants.get(participantId) ?? findParticipantByTrack(trackId);
  if (participant) {
    participant.tracks.delete(trackId);
    renderTile(participant);
  }
}

function onTrackMuted(trackId, participantId, muted) {
  if (participantId === state.participantId) return; // our own mute, already shown
  const info = state.trackInfo.get(trackId);
  if (info) info.muted = !!muted;
  const participant = state.remoteParticipants.get(participantId);
  if (participant) renderTile(participant);
}

function onLeft(reason) {
  if (!state.leaving) showBanner(`The session ended: ${reason ?? 'closed by the server'}.`, 'info');
  teardown();
}

// ---------------------------------------------------------------------------------------------
// ICE candidates: trickled with `candidate` messages, once the matching offer/answer was sent.
// ---------------------------------------------------------------------------------------------

/** Wires `onicecandidate` of `pc` to `candidate` messages for `target` ("publish"/"subscribe"). */
function trickleCandidates(pc, target) {
  let endSent = false;
  pc.addEventListener('icecandidate', (event) => {
    const candidate = event.candidate?.candidate ?? '';
    if (!candidate) {
      // End of candidates (null event, or an empty end-of-generation candidate): say it once.
      if (endSent) return;
      endSent = true;
    }
    queueCandidate(target, { type: 'candidate', target, candidate });
  });
}

function queueCandidate(target, msg) {
  const slot = state.candidates[target];
  if (slot.ready) send(msg);
  else slot.queue.push(msg);
}

/** Called after the offer/answer for `target` was sent: sends the candidates held back so far. */
function flushCandidates(target) {
  const slot = state.candidates[target];
  slot.ready = true;
  for (const msg of slot.queue.splice(0)) send(msg);
}

// ---------------------------------------------------------------------------------------------
// Publishing: our camera, mic and chat channel on the publish connection (we offer).
// ---------------------------------------------------------------------------------------------

async function startPublishing(session) {
  const stream = state.localStream;
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  state.pubPc = pc;
  trickleCandidates(pc, 'publish');
  pc.addEventListener('connectionstatechange', () => onPcStateChange('publish', pc));

  const [audioTrack] = stream.getAudioTracks();
  const [videoTrack] = stream.getVideoTracks();
  if (audioTrack) {
    state.audioTransceiver = pc.addTransceiver(audioTrack, { direction: 'sendonly' });
  }
  if (videoTrack) {
    // Three simulcast layers, lowest first; the SFU picks one per subscriber.
    state.videoTransceiver = pc.addTransceiver(videoTrack, {
      direction: 'sendonly',
      sendEncodings: [
        { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
        { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
        { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1500000 },
      ],
    });
    preferVideoCodec(state.videoTransceiver, new URLSearchParams(location.search).get('codec'));
  }
  openDataChannel(pc);

  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  if (session !== state.session) return;
  // The server is ICE-lite: no need to wait for gathering, candidates are trickled.
  send({ type: 'publish_offer', sdp: pc.localDescription.sdp });
  flushCandidates('publish');
}

/** With `?codec=h264` (or vp8, vp9, av1) the camera is sent with that codec if the browser has it. */
function preferVideoCodec(transceiver, codec) {
  if (!codec || !RTCRtpSender.getCapabilities || !transceiver.setCodecPreferences) return;
  const { codecs } = RTCRtpSender.getCapabilities('video');
  const wanted = codecs.filter((c) => c.mimeType.toLowerCase() === `video/${codec.toLowerCase()}`);
  if (wanted.length === 0) return;
  transceiver.setCodecPreferences([...wanted, ...codecs.filter((c) => !wanted.includes(c))]);
}

async function onPublishAnswer(msg, session) {
  const pc = state.pubPc;
  if (!pc) return;
  try {
    await pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
  } catch (err) {
    if (session === state.session) showBanner(`Could not apply the publish answer: ${err.message}`);
  }
}

/** Our `data` channel: chat messages we send go out on it. */
function openDataChannel(pc) {
  const channel = pc.createDataChannel('data');
  state.dataChannel = channel;
  channel.addEventListener('open', () => setChatEnabled(true));
  channel.addEventListener('close', () => setChatEnabled(false));
}

function onPcStateChange(target, pc) {
  if (pc.connectionState === 'failed') {
    showBanner(`The ${target} connection failed (ICE/DTLS). Check that the media port is reachable.`);
  }
}

// ---------------------------------------------------------------------------------------------
// Subscribing: every remote track on the subscribe connection (the server offers).
// ---------------------------------------------------------------------------------------------

/** Subscribe offers are processed strictly in order, each after the previous one is answered. */
function enqueueSubscribeOffer(msg, session) {
  state.subChain = state.subChain
    .then(() => handleSubscribeOffer(msg, session))
    .catch((err) => {
      if (session === state.session) showBanner(`Could not apply the subscribe offer: ${err.message ?? err}`);
    });
}

async function handleSubscribeOffer(msg, session) {
  if (session !== state.session) return;
  // Learn mid -> track before applying the offer: `track` events fire during setRemoteDescription.
  for (const t of msg.tracks ?? []) state.subMids.set(String(t.mid), t);

  const pc = state.subPc ?? createSubscribePc();
  await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
  if (session !== state.session) return;
  const answer = await pc.createAnswer();
  await pc.setLocalDescription(answer);
  if (session !== state.session) return;
  send({ type: 'subscribe_answer', sdp: pc.localDescription.sdp });
  flushCandidates('subscribe');
}

function createSubscribePc() {
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  state.subPc = pc;
  trickleCandidates(pc, 'subscribe');
  pc.addEventListener('connectionstatechange', () => onPcStateChange('subscribe', pc));
  pc.addEventListener('track', onRemoteTrack);
  pc.addEventListener('datachannel', (event) => {
    if (event.channel.label === 'data') listenForChat(event.channel);
  });
  return pc;
}

/** A remote track arrived: find whose it is from its mid and put it into their tile. */
function onRemoteTrack(event) {
  const mid = event.transceiver?.mid;
  const info = mid == null ? undefined : state.subMids.get(String(mid));
  if (!info) {
    console.warn(`track on unknown subscribe mid ${mid}`);
    return;
  }
  const participant = ensureParticipant(info.participant);
  participant.tracks.set(info.track, event.track);
  if (!state.trackInfo.has(info.track)) {
    state.trackInfo.set(info.track, { id: info.track, participant: info.participant, kind: event.track.kind, muted: false });
  }
  renderTile(participant);
}

// ---------------------------------------------------------------------------------------------
// Remote tiles: one per remote participant, with its video, audio and mute badges.
// ---------------------------------------------------------------------------------------------

function addParticipant(p) {
  if (!p?.id || p.id === state.participantId) return;
  const participant = ensureParticipant(p.id);
  participant.identity = p.identity ?? participant.identity;
  participant.name = p.name || p.identity || participant.name;
  renderTile(participant);
}

/** The participant's entry, created (with its tile) on first use. */
function ensureParticipant(id) {
  let participant = state.remoteParticipants.get(id);
  if (participant) return participant;

  const tile = ui.tileTemplate.content.firstElementChild.cloneNode(true);
  const videoEl = tile.querySelector('video.main-video');
  const audioEl = tile.querySelector('audio');
  tile.dataset.participantId = id;
  videoEl.dataset.participant = id;
  audioEl.dataset.participant = id;
  ui.tiles.append(tile);

  participant = { id, identity: '', name: id, tile, videoEl, audioEl, tracks: new Map() };
  state.remoteParticipants.set(id, participant);
  return participant;
}

function removeParticipant(id) {
  const participant = state.remoteParticipants.get(id);
  for (const [trackId, info] of state.trackInfo) {
    if (info.participant === id) state.trackInfo.delete(trackId);
  }
  for (const [mid, info] of state.subMids) {
    if (info.participant === id) state.subMids.delete(mid);
  }
  if (!participant) return;
  detachMedia(participant.tile);
  participant.tile.remove();
  state.remoteParticipants.delete(id);
}

function findParticipantByTrack(trackId) {
  for (const participant of state.remoteParticipants.values()) {
    if (participant.tracks.has(trackId)) return participant;
  }
  return undefined;
}

/** Brings a tile in line with the participant's name, tracks and mute state. */
function renderTile(participant) {
  const { tile, videoEl, audioEl } = participant;
  tile.querySelector('.tile-name').textContent = participant.name;

  const videos = [];
  const audios = [];
  for (const [trackId, track] of participant.tracks) {
    (track.kind === 'video' ? videos : audios).push({ trackId, track });
  }

  // First video track in the main element, any others (e.g. a screen share) in small ones.
  setElementTracks(videoEl, videos.slice(0, 1));
  renderExtraVideos(tile.querySelector('.extra-videos'), participant.id, videos.slice(1));
  setElementTracks(audioEl, audios);

  const muted = (trackId) => state.trackInfo.get(trackId)?.muted === true;
  const cameraOff = videos.length === 0 || muted(videos[0].trackId);
  const micOff = audios.length > 0 && audios.every((a) => muted(a.trackId));
  tile.classList.toggle('no-video', cameraOff);
  tile.querySelector('.badge.mic-off').hidden = !micOff;
}

/** Points a media element at exactly these tracks; leaves it alone if nothing changed. */
function setElementTracks(el, entries) {
  const key = entries.map((e) => e.trackId).join(',');
  if (el.dataset.tracks === key) return;
  el.dataset.tracks = key;
  if (entries.length === 0) {
    el.srcObject = null;
    return;
  }
  el.srcObject = new MediaStream(entries.map((e) => e.track));
  playMedia(el);
}

function renderExtraVideos(container, participantId, entries) {
  const wanted = new Set(entries.map((e) => e.trackId));
  for (const el of [...container.children]) {
    if (!wanted.has(el.dataset.tracks)) {
      el.srcObject = null;
      el.remove();
    }
  }
  for (const entry of entries) {
    if (container.querySelector(`video[data-tracks="${CSS.escape(entry.trackId)}"]`)) continue;
    const el = document.createElement('video');
    Object.assign(el, { autoplay: true, playsInline: true, muted: true });
    el.dataset.participant = participantId;
    el.dataset.extra = 'true';
    container.append(el);
    setElementTracks(el, [entry]);
  }
}

function detachMedia(root) {
  for (const el of root.querySelectorAll('video, audio')) {
    el.srcObject = null;
    delete el.dataset.tracks;
  }
}

// ---------------------------------------------------------------------------------------------
// Chat: we send on our publish `data` channel; the room's messages arrive on the server's
// `data` channel of the subscribe connection as {"from", "identity", "data"}.
// ---------------------------------------------------------------------------------------------

function listenForChat(channel) {
  channel.binaryType = 'arraybuffer';
  channel.addEventListener('message', (event) => {
    if (typeof event.data === 'string') onChatText(event.data);
    else onChatBinary(new Uint8Array(event.data));
  });
}

function onChatText(text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    console.warn('ignoring a data message that is not JSON');
    return;
  }
  appendChat(senderName(msg.from, msg.identity), String(msg.data ?? ''));
}

/** Binary relay format: [n: u8][participant id: n bytes UTF-8][payload]. */
function onChatBinary(bytes) {
  if (bytes.length < 1 || bytes.length < 1 + bytes[0]) return;
  const from = new TextDecoder().decode(bytes.subarray(1, 1 + bytes[0]));
  const payload = bytes.subarray(1 + bytes[0]);
  appendChat(senderName(from, ''), `(binary message, ${payload.length} bytes)`);
}

function senderName(participantId, identity) {
  return state.remoteParticipants.get(participantId)?.name || identity || participantId || 'unknown';
}

function appendChat(from, text, own = false) {
  const item = document.createElement('li');
  item.className = own ? 'own' : '';
  item.dataset.testid = 'chat-message';
  const who = document.createElement('span');
  who.className = 'chat-from';
  who.textContent = from;
  const body = document.createElement('span');
  body.className = 'chat-text';
  body.textContent = text;
  item.append(who, body);
  ui.chatLog.append(item);
  ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
}

function sendChat() {
  const text = ui.chatInput.value.trim();
  const channel = state.dataChannel;
  if (!text || channel?.readyState !== 'open') return;
  channel.send(text);
  appendChat(`${state.displayName} (you)`, text, true);
  ui.chatInput.value = '';
}

function setChatEnabled(enabled) {
  ui.chatInput.disabled = !enabled;
  ui.chatSend.disabled = !enabled;
  ui.chatInput.placeholder = enabled ? 'Message the room'
    : state.viewer ? 'Viewers cannot chat' : 'Connecting…';
}

// ---------------------------------------------------------------------------------------------
// Controls: mute mic, stop camera, leave; and the self-view tile.
// ---------------------------------------------------------------------------------------------

function renderLocalTile() {
  const stream = state.localStream;
  ui.localTile.hidden = !stream;
  ui.localVideo.srcObject = stream && stream.getVideoTracks().length ? stream : null;
  if (ui.localVideo.srcObject) playMedia(ui.localVideo);
  ui.localTile.classList.toggle('no-video', !stream?.getVideoTracks().length || state.camMuted);
  ui.localTile.querySelector('.badge.mic-off').hidden = !state.micMuted;
}

function updateControls() {
  const stream = state.localStream;
  const hasAudio = !!stream?.getAudioTracks().length;
  const hasVideo = !!stream?.getVideoTracks().length;
  ui.micButton.hidden = !hasAudio;
  ui.camButton.hidden = !hasVideo;
  ui.micButton.textContent = state.micMuted ? 'Unmute mic' : 'Mute mic';
  ui.camButton.textContent = state.camMuted ? 'Start camera' : 'Stop camera';
  ui.micButton.setAttribute('aria-pressed', String(state.micMuted));
  ui.camButton.setAttribute('aria-pressed', String(state.camMuted));
}

/** Mutes or unmutes our audio or video track locally and tells the room. */
function setOwnMuted(kind, muted) {
  const stream = state.localStream;
  if (!stream) return;
  const tracks = kind === 'audio' ? stream.getAudioTracks() : stream.getVideoTracks();
  for (const track of tracks) track.enabled = !muted;
  if (kind === 'audio') state.micMuted = muted;
  else state.camMuted = muted;

  const transceiver = kind === 'audio' ? state.audioTransceiver : state.videoTransceiver;
  const trackId = transceiver?.mid != null ? state.ownTrackIds.get(transceiver.mid) : undefined;
  // Not published yet? syncOwnMute sends it when `track_published` tells us the track id.
  if (trackId) send({ type: 'mute', track: trackId, muted });
  updateControls();
  renderLocalTile();
}

/** On `track_published` for our own track: tell the server if we muted it before it knew the id. */
function syncOwnMute(trackId, serverMuted) {
  for (const [kind, transceiver] of [['audio', state.audioTransceiver], ['video', state.videoTransceiver]]) {
    if (transceiver?.mid == null || state.ownTrackIds.get(transceiver.mid) !== trackId) continue;
    const muted = kind === 'audio' ? state.micMuted : state.camMuted;
    if (muted !== !!serverMuted) send({ type: 'mute', track: trackId, muted });
  }
}

function leave() {
  state.leaving = true;
  send({ type: 'leave' });
  // The server replies `left` and closes the socket; give it a second to do so, then close it
  // ourselves. Local cleanup does not wait.
  const ws = state.ws;
  teardown({ closeSocket: false });
  if (ws) setTimeout(() => ws.close(1000, 'left'), 1000);
}

function initControls() {
  ui.micButton.addEventListener('click', () => setOwnMuted('audio', !state.micMuted));
  ui.camButton.addEventListener('click', () => setOwnMuted('video', !state.camMuted));
  ui.leaveButton.addEventListener('click', leave);
  ui.bannerClose.addEventListener('click', hideBanner);
  ui.audioUnlockButton.addEventListener('click', () => {
    ui.audioUnlockButton.hidden = true;
    for (const el of document.querySelectorAll('audio, video')) {
      if (el.srcObject) playMedia(el);
    }
  });
  ui.chatForm.addEventListener('submit', (event) => {
    event.preventDefault();
    sendChat();
  });
}

// ---------------------------------------------------------------------------------------------
// Teardown: closes everything of the current session and shows the join form again.
// ---------------------------------------------------------------------------------------------

function teardown({ closeSocket = true } = {}) {
  state.session++;
  clearInterval(state.pingTimer);
  if (closeSocket) state.ws?.close();

  state.pubPc?.close();
  state.subPc?.close();
  state.localStream?.getTracks().forEach((t) => t.stop());

  for (const participant of state.remoteParticipants.values()) {
    detachMedia(participant.tile);
    participant.tile.remove();
  }
  ui.localVideo.srcObject = null;
  ui.chatLog.replaceChildren();

  Object.assign(state, {
    joined: false, ws: null, pingTimer: null, participantId: null,
    localStream: null, pubPc: null, dataChannel: null, audioTransceiver: null, videoTransceiver: null,
    micMuted: false, camMuted: false, subPc: null, subChain: Promise.resolve(),
  });
  state.ownTrackIds.clear();
  state.subMids.clear();
  state.remoteParticipants.clear();
  state.trackInfo.clear();
  for (const slot of Object.values(state.candidates)) {
    slot.ready = false;
    slot.queue.length = 0;
  }

  ui.audioUnlockButton.hidden = true;
  ui.joinButton.disabled = false;
  showView(false);
}

// ---------------------------------------------------------------------------------------------
// Boot.
// ---------------------------------------------------------------------------------------------

window.addEventListener('unhandledrejection', (event) => {
  showBanner(`Unexpected error: ${event.reason?.message ?? event.reason}`);
});

initControls();
initJoinForm();
