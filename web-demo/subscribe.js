// Subscribing: the subscribe connection (the server offers, we answer) that carries every remote
// track and the server's `data` channel. Learns which track each mid carries from the offer's
// `tracks` and hands arriving tracks to the tiles.

import { state, isCurrent } from './state.js';
import { attachRemoteTrack } from './tiles.js';
import { decryptReceiver } from './e2ee.js';

/** Hooks set by app.js: `onIceTrouble(which, pc)`, `onDataChannel(channel)`, `onError(text)`. */
const hooks = { onIceTrouble: () => {}, onDataChannel: () => {}, onError: () => {} };

export function setSubscribeHooks(h) {
  Object.assign(hooks, h);
}

/** Subscribe offers are processed strictly in order, each after the previous one is answered. */
export function onSubscribeOffer(msg, session) {
  state.subChain = state.subChain
    .then(() => answerOffer(msg, session))
    .catch((err) => {
      if (isCurrent(session)) hooks.onError(`Could not apply the subscribe offer: ${err.message ?? err}`);
    });
}

async function answerOffer(msg, session) {
  if (!isCurrent(session)) return;
  // Learn mid -> track before applying the offer: `track` events fire during setRemoteDescription.
  for (const t of msg.tracks ?? []) state.subMids.set(String(t.mid), t);

  const pc = state.subPc ?? createSubscribePc(session);
  await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
  if (!isCurrent(session)) return;
  const answer = await pc.createAnswer();
  await pc.setLocalDescription(answer);
  if (!isCurrent(session)) return;
  state.signalling.send({ type: 'subscribe_answer', sdp: pc.localDescription.sdp });
  state.signalling.flushCandidates('subscribe');
}

function createSubscribePc(session) {
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', iceServers: state.iceServers });
  const created = performance.now();
  state.subPc = pc;
  state.signalling.trickle(pc, 'subscribe');
  pc.addEventListener('connectionstatechange', () => {
    if (isCurrent(session) && pc.connectionState === 'connected') {
      state.mediaEverConnected = true;
      state.connectedAt.subscribe = Date.now();
      state.connectMs.subscribe ??= Math.round(performance.now() - created);
    }
    if (isCurrent(session) && pc.connectionState === 'failed') hooks.onIceTrouble('subscribe', pc);
  });
  pc.addEventListener('iceconnectionstatechange', () => {
    if (isCurrent(session) && pc.iceConnectionState === 'disconnected') hooks.onIceTrouble('subscribe', pc);
  });
  pc.addEventListener('track', (event) => {
    if (isCurrent(session)) onRemoteTrack(event);
  });
  pc.addEventListener('datachannel', (event) => {
    if (isCurrent(session) && event.channel.label === 'data') hooks.onDataChannel(event.channel);
  });
  return pc;
}

/** A remote track arrived: find which track it is from its mid and show it. */
function onRemoteTrack(event) {
  // With `?e2ee`, every frame is decrypted before it is decoded (or dropped if it cannot be).
  decryptReceiver(event.receiver);
  const mid = event.transceiver?.mid;
  const info = mid == null ? undefined : state.subMids.get(String(mid));
  if (!info) {
    console.warn(`track on unknown subscribe mid ${mid}`);
    return;
  }
  attachRemoteTrack(info, event.track);
}

/** The receiver of a remote MediaStreamTrack, for its stats. */
export function receiverOf(track) {
  return state.subPc?.getReceivers().find((r) => r.track === track);
}

export function closeSubscribing() {
  state.subPc?.close();
  state.subPc = null;
  state.subMids.clear();
  state.subChain = Promise.resolve();
}
