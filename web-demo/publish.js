// Publishing: the publish connection (we offer, the server answers) with our microphone, our
// camera in three simulcast layers (or, with `?svc=`, one SVC encoding), the screen share when
// there is one, and our `data` channel. Also what we tell the server about our tracks: `sources`
// per mid, and `mute`.

import { state, isCurrent } from './state.js';
import { getScreen } from './media.js';
import { E2EE_VIDEO_CODECS, e2eeEnabled, encryptSender } from './e2ee.js';

/** Long enough for an answer delayed by an outage and a resume of the signalling socket. */
const ANSWER_TIMEOUT_MS = 40_000;

/** Our transceivers by job, and the `source` each one's mid carries (PROTOCOL.md, publish_offer). */
const SOURCES = { mic: 'microphone', camera: 'camera', screen: 'screen', screenAudio: 'screen_audio' };

/**
 * Camera simulcast, lowest first (q, h, f = 320x180, 640x360, 1280x720 from a 1280x720 capture).
 * The SFU forwards one layer per subscriber.
 */
const CAMERA_ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

/**
 * With `?svc=MODE` (e.g. `L3T3_KEY`) the camera is sent instead as one encoding carrying spatial
 * and temporal layers (SVC: 320x180, 640x360 and 1280x720 in one stream for L3). The SFU
 * forwards each subscriber the spatial layers up to the one it chose.
 */
const SVC_MAX_BITRATE = 2_500_000;
/**
 * Codecs that can carry more than one spatial layer. Chromium does not list the modes each
 * codec supports (`scalabilityModes` is absent from its capabilities), and when the negotiated
 * codec cannot carry the mode it silently sends one layer (L1T2) instead: so ask for these only.
 */
const SPATIAL_SVC_CODECS = ['vp9', 'av1'];

const SCREEN_ENCODINGS = [{ maxBitrate: 1_500_000 }];

/**
 * Hooks set by app.js: `onFailed(reason, pc)` when the connection fails, `onIceTrouble(which, pc)`
 * when it loses its path or fails, `onChatReady(bool)`, `onError(text)`, `onChange()`.
 */
const hooks = {
  onFailed: () => {}, onIceTrouble: () => {}, onChatReady: () => {}, onError: () => {}, onChange: () => {},
};

export function setPublishHooks(h) {
  Object.assign(hooks, h);
}

function send(msg) {
  state.signalling?.send(msg);
}

/** Creates the publish connection with what we have (mic, camera, screen) and offers it. */
export function startPublishing(session) {
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', iceServers: state.iceServers });
  const created = performance.now();
  state.pubPc = pc;
  state.signalling.trickle(pc, 'publish');
  pc.addEventListener('connectionstatechange', () => {
    if (isCurrent(session) && pc.connectionState === 'connected') {
      state.mediaEverConnected = true;
      state.connectedAt.publish = Date.now();
      state.connectMs.publish ??= Math.round(performance.now() - created);
    }
    if (isCurrent(session) && pc.connectionState === 'failed') hooks.onIceTrouble('publish', pc);
  });
  pc.addEventListener('iceconnectionstatechange', () => {
    if (isCurrent(session) && pc.iceConnectionState === 'disconnected') hooks.onIceTrouble('publish', pc);
  });

  const stream = state.localStream;
  const [audioTrack] = stream?.getAudioTracks() ?? [];
  const [videoTrack] = stream?.getVideoTracks() ?? [];
  if (audioTrack) {
    state.tx.mic = pc.addTransceiver(audioTrack, { direction: 'sendonly', streams: [stream] });
    const audio = new URLSearchParams(location.search).get('audio');
    offerOnlyAudioCodec(state.tx.mic, audio);
    if (e2eeEnabled() && !audio) withoutRed(state.tx.mic);
  }
  if (videoTrack) state.tx.camera = addCameraTransceiver(pc, videoTrack, stream);
  openDataChannel(pc, session);
  // A screen shared before a reconnect is published again with the rest.
  const screen = state.screenStream ? addScreenTransceivers(pc, state.screenStream) : Promise.resolve();
  return screen
    .catch((err) => hooks.onError(`Screen sharing failed: ${err.message ?? err}`))
    .then(() => negotiate(session));
}

/** Restarts ICE on the publish connection: an offer with new credentials. */
export function restartPublishIce(session) {
  const pc = state.pubPc;
  if (!pc || pc.signalingState === 'closed') return;
  pc.restartIce();
  negotiate(session);
}

/**
 * The camera's transceiver: three simulcast encodings, or with `?svc=MODE` one SVC encoding.
 * An SVC mode the codec or the browser cannot send falls back to simulcast, saying why in the
 * console. `state.cameraSvc` is the mode in use (null for simulcast).
 */
function addCameraTransceiver(pc, track, stream) {
  const params = new URLSearchParams(location.search);
  const codec = cameraCodec(params.get('codec'));
  const svc = params.get('svc');
  const init = { direction: 'sendonly', streams: [stream] };
  state.cameraSvc = null;
  if (svc) {
    let refusal = svcRefusal(svc, codec);
    if (!refusal) {
      try {
        const transceiver = pc.addTransceiver(track, { ...init, sendEncodings: [{ scalabilityMode: svc, maxBitrate: SVC_MAX_BITRATE }] });
        preferVideoCodec(transceiver, codec);
        state.cameraSvc = svc;
        return transceiver;
      } catch (err) {
        refusal = `the browser refused it (${err.message ?? err})`;
      }
    }
    console.warn(`?svc=${svc}: ${refusal}; sending the camera in simulcast instead`);
  }
  // Chromium sends VP9 and AV1 simulcast only with a scalability mode on each encoding
  // (without one it sends the lowest layer alone).
  const perEncoding = SPATIAL_SVC_CODECS.includes(codec?.toLowerCase()) ? { scalabilityMode: 'L1T3' } : {};
  const encodings = CAMERA_ENCODINGS.map((e) => ({ ...e, ...perEncoding }));
  const transceiver = pc.addTransceiver(track, { ...init, sendEncodings: encodings });
  preferVideoCodec(transceiver, codec);
  return transceiver;
}

/**
 * The camera's codec: `?codec=`, except that an end-to-end encrypted call needs one whose
 * packetizer does not read the (encrypted) frame: VP8 unless VP9 was asked for.
 */
function cameraCodec(asked) {
  if (!e2eeEnabled() || E2EE_VIDEO_CODECS.includes(asked?.toLowerCase())) return asked;
  if (asked) console.warn(`?e2ee: ${asked} cannot be encrypted end to end here; sending the camera in VP8`);
  return 'vp8';
}

/** Takes RED out of a transceiver's audio codecs (end-to-end encryption would encrypt its headers). */
function withoutRed(transceiver) {
  if (!RTCRtpSender.getCapabilities || !transceiver.setCodecPreferences) return;
  const { codecs } = RTCRtpSender.getCapabilities('audio');
  transceiver.setCodecPreferences(codecs.filter((c) => c.mimeType.toLowerCase() !== 'audio/red'));
}

/** Why the camera cannot be sent in scalability mode `mode` with `codec` (null: it can be tried). */
function svcRefusal(mode, codec) {
  const spatial = Number(/^[LS](\d+)T\d+/.exec(mode)?.[1] ?? 1);
  if (spatial < 2) return null;
  const name = codec?.toLowerCase();
  if (!SPATIAL_SVC_CODECS.includes(name)) {
    return `spatial layers need ?codec=vp9 or ?codec=av1 (${codec ?? 'the default VP8'} would carry a single layer)`;
  }
  if (!RTCRtpSender.getCapabilities || !RTCRtpTransceiver.prototype.setCodecPreferences) {
    return `this browser cannot be asked to send ${codec}`;
  }
  const { codecs } = RTCRtpSender.getCapabilities('video');
  if (!codecs.some((c) => c.mimeType.toLowerCase() === `video/${name}`)) return `this browser cannot send ${codec}`;
  return null;
}

/** Camera senders already found sending another mode than `?svc=` asked (said once each). */
const svcWarned = new WeakSet();

/** After an answer: says in the console if the browser sends the camera in another mode than `?svc=` asked. */
function checkCameraSvc() {
  const sender = state.tx.camera?.sender;
  if (!state.cameraSvc || !sender || svcWarned.has(sender)) return;
  const encodings = sender.getParameters().encodings ?? [];
  const mode = encodings[0]?.scalabilityMode;
  if (encodings.length !== 1 || (mode && mode !== state.cameraSvc)) {
    svcWarned.add(sender);
    console.warn(`?svc=${state.cameraSvc}: the browser sends the camera as ${encodings.length} encoding(s) in ${mode ?? 'an unknown mode'} (the negotiated codec may not support it)`);
  }
}

/** With `?codec=h264` (or vp8, vp9, av1) the camera is sent with that codec if the browser has it. */
function preferVideoCodec(transceiver, codec) {
  if (!codec || !RTCRtpSender.getCapabilities || !transceiver.setCodecPreferences) return;
  const { codecs } = RTCRtpSender.getCapabilities('video');
  const wanted = codecs.filter((c) => c.mimeType.toLowerCase() === `video/${codec.toLowerCase()}`);
  if (wanted.length === 0) return;
  transceiver.setCodecPreferences([...wanted, ...codecs.filter((c) => !wanted.includes(c))]);
}

/**
 * With `?audio=pcmu` (or pcma, opus) the microphone is offered in that codec alone, with the
 * telephone events (DTMF) of its clock rate: what a phone or SIP gateway would offer.
 */
function offerOnlyAudioCodec(transceiver, codec) {
  if (!codec || !RTCRtpSender.getCapabilities || !transceiver.setCodecPreferences) return;
  const { codecs } = RTCRtpSender.getCapabilities('audio');
  const wanted = codecs.filter((c) => c.mimeType.toLowerCase() === `audio/${codec.toLowerCase()}`);
  if (wanted.length === 0) return;
  const events = codecs.filter((c) => c.mimeType.toLowerCase() === 'audio/telephone-event' &&
    wanted.some((w) => w.clockRate === c.clockRate));
  transceiver.setCodecPreferences([...wanted, ...events]);
}

/** Our `data` channel: chat messages we send go out on it. */
function openDataChannel(pc, session) {
  const channel = pc.createDataChannel('data');
  state.dataChannel = channel;
  channel.addEventListener('open', () => isCurrent(session) && hooks.onChatReady(true));
  channel.addEventListener('close', () => isCurrent(session) && hooks.onChatReady(false));
}

/** mid -> source for each of our transceivers that has a mid. */
function sourcesByMid() {
  const sources = {};
  for (const [job, source] of Object.entries(SOURCES)) {
    const mid = state.tx[job]?.mid;
    if (mid != null) sources[mid] = source;
  }
  return sources;
}

/**
 * (Re)negotiates the publish connection: offer, `publish_offer` with `sources`, wait for the
 * answer. Offers are strictly one after the other.
 */
export function negotiate(session) {
  const next = state.pubChain.then(() => offerOnce(session));
  state.pubChain = next.catch((err) => {
    if (isCurrent(session)) hooks.onError(`Publishing failed: ${err.message ?? err}`);
  });
  return state.pubChain;
}

async function offerOnce(session) {
  const pc = state.pubPc;
  if (!pc || !isCurrent(session) || pc.signalingState === 'closed') return;
  // With `?e2ee`, every sender (microphone, camera, screen) encrypts what it sends.
  if (e2eeEnabled()) pc.getSenders().forEach(encryptSender);
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  if (!isCurrent(session)) return;
  const answer = waitForAnswer();
  // The server is ICE-lite: no need to wait for gathering, candidates are trickled.
  send({ type: 'publish_offer', sdp: pc.localDescription.sdp, sources: sourcesByMid() });
  state.signalling.flushCandidates('publish');
  const sdp = await answer;
  if (!isCurrent(session) || pc.signalingState === 'closed') return;
  await pc.setRemoteDescription({ type: 'answer', sdp });
  checkCameraSvc();
}

function waitForAnswer() {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      state.pendingAnswer = null;
      reject(new Error(`no publish_answer within ${ANSWER_TIMEOUT_MS / 1000} s`));
    }, ANSWER_TIMEOUT_MS);
    state.pendingAnswer = {
      resolve: (sdp) => { clearTimeout(timer); state.pendingAnswer = null; resolve(sdp); },
      reject: (err) => { clearTimeout(timer); state.pendingAnswer = null; reject(err); },
    };
  });
}

export function onPublishAnswer(msg) {
  state.pendingAnswer?.resolve(msg.sdp);
}

/** A server `error` that refuses our latest offer (bad_sdp, permission_denied...). */
export function failPendingOffer(message) {
  state.pendingAnswer?.reject(new Error(message));
}

// ---------------------------------------------------------------------------------------------
// Screen share: an extra video (and maybe audio) track on the publish connection. Stopping
// makes its transceivers inactive (the server unpublishes the track); sharing again reuses them.
// ---------------------------------------------------------------------------------------------

/** Puts the screen's tracks on `pc`: on the transceivers of an earlier share if there are some. */
async function addScreenTransceivers(pc, stream) {
  const [video] = stream.getVideoTracks();
  const [audio] = stream.getAudioTracks();
  if (video) {
    if ('contentHint' in video) video.contentHint = 'detail';
    state.tx.screen = await reuseOrAdd(pc, state.tx.screen, video, stream, SCREEN_ENCODINGS);
  }
  if (audio) state.tx.screenAudio = await reuseOrAdd(pc, state.tx.screenAudio, audio, stream);
}

async function reuseOrAdd(pc, transceiver, track, stream, sendEncodings) {
  if (transceiver && transceiver.currentDirection !== 'stopped') {
    await transceiver.sender.replaceTrack(track);
    transceiver.sender.setStreams?.(stream);
    transceiver.direction = 'sendonly';
    return transceiver;
  }
  return pc.addTransceiver(track, { direction: 'sendonly', streams: [stream], ...(sendEncodings ? { sendEncodings } : {}) });
}

/** Asks which screen to share, and publishes it (or, while reconnecting, at the next join). */
export async function startScreenShare() {
  if (state.screenStream) return;
  const stream = await getScreen();
  if (state.phase === 'idle' || state.screenStream) {
    // The user left the call (or shared twice) while the browser's picker was open.
    stream.getTracks().forEach((t) => t.stop());
    return;
  }
  state.screenStream = stream;
  // The browser's own "Stop sharing" button ends the track.
  stream.getVideoTracks()[0]?.addEventListener('ended', () => {
    if (state.screenStream !== stream) return;
    stopScreenShare().catch((err) => hooks.onError(`Could not stop sharing: ${err.message ?? err}`));
  });
  hooks.onChange();
  if (state.pubPc) {
    await addScreenTransceivers(state.pubPc, stream);
    await negotiate(state.session);
  }
}

export async function stopScreenShare() {
  const stream = state.screenStream;
  if (!stream) return;
  state.screenStream = null;
  stream.getTracks().forEach((t) => t.stop());
  hooks.onChange();
  const pc = state.pubPc;
  if (!pc || pc.signalingState === 'closed') return;
  for (const transceiver of [state.tx.screen, state.tx.screenAudio]) {
    if (!transceiver || transceiver.currentDirection === 'stopped') continue;
    await transceiver.sender.replaceTrack(null);
    transceiver.direction = 'inactive';
  }
  await negotiate(state.session);
}

// ---------------------------------------------------------------------------------------------
// Mute: local track enabled flag, and `mute` so the others see it.
// ---------------------------------------------------------------------------------------------

/** Mutes or unmutes our microphone ('audio') or camera ('video') and tells the room. */
export function setOwnMuted(kind, muted) {
  const stream = state.localStream;
  if (!stream) return;
  const tracks = kind === 'audio' ? stream.getAudioTracks() : stream.getVideoTracks();
  for (const track of tracks) track.enabled = !muted;
  if (kind === 'audio') state.micMuted = muted;
  else state.camMuted = muted;

  const transceiver = kind === 'audio' ? state.tx.mic : state.tx.camera;
  const trackId = transceiver?.mid != null ? state.ownTrackIds.get(transceiver.mid) : undefined;
  // Not published yet? onOwnTrackPublished sends it when `track_published` gives the track id.
  if (trackId) send({ type: 'mute', track: trackId, muted });
  hooks.onChange();
}

/** `track_published` for one of our tracks: remember its id; tell the server if we muted it before. */
export function onOwnTrackPublished(track) {
  state.ownTrackIds.set(String(track.mid), track.id);
  for (const [job, muted] of [['mic', state.micMuted], ['camera', state.camMuted]]) {
    const mid = state.tx[job]?.mid;
    if (mid == null || String(mid) !== String(track.mid)) continue;
    if (muted !== !!track.muted) send({ type: 'mute', track: track.id, muted });
  }
}

/**
 * `track_muted` about one of our own tracks. We announce our own mutes, so a mute we did not
 * make is the room service's: say so (it stops forwarding the track, and only it can undo it).
 */
export function onOwnTrackMuted(trackId, muted) {
  for (const [job, label, ownMute] of [['mic', 'microphone', state.micMuted], ['camera', 'camera', state.camMuted]]) {
    const mid = state.tx[job]?.mid;
    if (mid == null || state.ownTrackIds.get(String(mid)) !== trackId) continue;
    if (muted && !ownMute) hooks.onError(`The room's host muted your ${label}; the others cannot ${job === 'mic' ? 'hear' : 'see'} it until they unmute it.`);
  }
}

/**
 * `layers_wanted` (dynacast): send only the camera layers someone receives. `active` follows
 * the track's simulcast RIDs, lowest first, which name our encodings. An SVC camera (one
 * encoding, no RID) is left as it is: its spatial layers cannot be turned off one by one.
 */
export function onLayersWanted(msg) {
  // One setParameters at a time: each needs the parameters the previous one left.
  layersChain = layersChain.then(() => applyLayersWanted(msg));
  return layersChain;
}

let layersChain = Promise.resolve();

async function applyLayersWanted(msg) {
  const sender = state.tx.camera?.sender;
  const mid = state.tx.camera?.mid;
  if (!sender || mid == null || state.ownTrackIds.get(String(mid)) !== msg.track) return;
  const rids = CAMERA_ENCODINGS.map((e) => e.rid);
  const params = sender.getParameters();
  let changed = false;
  for (const encoding of params.encodings ?? []) {
    const index = rids.indexOf(encoding.rid);
    const active = msg.active?.[index];
    if (typeof active === 'boolean' && encoding.active !== active) {
      encoding.active = active;
      changed = true;
    }
  }
  if (changed) await sender.setParameters(params).catch((err) => console.warn(`could not change the sent layers: ${err.message ?? err}`));
}

/** Closes the publish connection (the local media stays, for a rejoin). */
export function closePublishing() {
  state.pendingAnswer?.reject(new Error('the connection was closed'));
  state.pubPc?.close();
  Object.assign(state, {
    pubPc: null,
    dataChannel: null,
    tx: { mic: null, camera: null, screen: null, screenAudio: null },
    pubChain: Promise.resolve(),
    pendingAnswer: null,
  });
  state.ownTrackIds.clear();
}
