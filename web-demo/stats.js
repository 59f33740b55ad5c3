// Live stats overlays from getStats, once a second: on each remote video tile the resolution,
// frame rate, bitrate, packet loss and which layer arrives (inferred from the decoded width:
// "layer low (q)" for a simulcast RID, "layer low (S0)" for an SVC spatial layer) and, in an
// end-to-end encrypted call, whether frames decrypt; on the self-view what the camera is sending. The header's Stats button shows or hides them.

import { state } from './state.js';
import { ui } from './ui.js';
import { remoteVideoTiles } from './tiles.js';
import { receiverOf } from './subscribe.js';
import { e2eeSummary } from './e2ee.js';

const EVERY_MS = 1000;
/** Camera layer widths (publish.js), lowest first: simulcast RIDs, or SVC spatial layers S0..S2. */
const LAYERS = [
  { width: 320, name: 'low', rid: 'q' },
  { width: 640, name: 'medium', rid: 'h' },
  { width: 1280, name: 'high', rid: 'f' },
];
const STORE = 'sfu-demo.stats';

let timer = null;
let running = false;
/** Track id (or 'local') -> previous {bytes, lost, received, timestamp}. */
const previous = new Map();

export function initStats() {
  setVisible(localStorage.getItem(STORE) !== 'off');
  ui.statsButton.addEventListener('click', () => setVisible(document.body.classList.contains('hide-stats')));
}

function setVisible(visible) {
  document.body.classList.toggle('hide-stats', !visible);
  ui.statsButton.setAttribute('aria-pressed', String(visible));
  localStorage.setItem(STORE, visible ? 'on' : 'off');
}

export function startStats() {
  stopStats();
  timer = setInterval(tick, EVERY_MS);
}

export function stopStats() {
  clearInterval(timer);
  timer = null;
  previous.clear();
}

/** The simulcast layer whose width is nearest (by ratio) to a decoded width. */
export function layerForWidth(width) {
  let best = LAYERS[0];
  for (const layer of LAYERS) {
    if (Math.abs(Math.log(width / layer.width)) < Math.abs(Math.log(width / best.width))) best = layer;
  }
  return best;
}

async function tick() {
  if (running || document.body.classList.contains('hide-stats')) return;
  running = true;
  try {
    await Promise.all([...remoteVideoTiles().map(updateRemote), updateLocal()]);
  } catch {
    // A connection closed mid-way: the next tick sees the new state.
  } finally {
    running = false;
  }
}

async function updateRemote({ statsEl, track, trackId, simulcast, layered }) {
  const receiver = receiverOf(track);
  if (!receiver) return;
  const report = await receiver.getStats();
  let inbound = null;
  report.forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') inbound = r;
  });
  if (!inbound) return;
  const now = { bytes: inbound.bytesReceived ?? 0, lost: inbound.packetsLost ?? 0, received: inbound.packetsReceived ?? 0, timestamp: inbound.timestamp };
  const before = previous.get(trackId);
  previous.set(trackId, now);

  const width = inbound.frameWidth ?? 0;
  const height = inbound.frameHeight ?? 0;
  // The codec as the decoder sees it: "VP9", "AV1"...
  const codec = report.get(inbound.codecId)?.mimeType?.split('/')[1]?.toUpperCase() ?? '';
  const fps = Math.round(inbound.framesPerSecond ?? 0);
  let kbps = 0;
  let loss = 0;
  if (before && now.timestamp > before.timestamp) {
    kbps = ((now.bytes - before.bytes) * 8) / (now.timestamp - before.timestamp);
    const lost = Math.max(0, now.lost - before.lost);
    const got = Math.max(0, now.received - before.received);
    loss = lost + got > 0 ? (100 * lost) / (lost + got) : 0;
  }
  const layer = width > 0 && layered ? layerForWidth(width) : null;
  // Simulcast layers are named by their RID, an SVC track's (no RIDs) by their spatial index.
  const tag = layer && (simulcast.length > 1 ? layer.rid : `S${LAYERS.indexOf(layer)}`);
  const why = layered ? describeLayerState(state.layerStates.get(trackId)) : '';

  const e2ee = e2eeSummary();
  statsEl.dataset.width = String(width);
  statsEl.dataset.layer = layer?.name ?? '';
  statsEl.textContent = (width
    ? `${codec ? `${codec} · ` : ''}${width}×${height} · ${fps} fps · ${formatRate(kbps)}\nloss ${loss.toFixed(1)}%` +
      (layer ? ` · layer ${layer.name} (${tag})` : ' · single layer') + (why ? `\n${why}` : '')
    : 'waiting for video…') + (e2ee ? `\n${e2ee}` : '');
}

/** The server's `layer_state` for a tile, as a line: why this layer, and any switch under way. */
function describeLayerState(layerState) {
  if (!layerState) return '';
  const name = (i) => LAYERS[i]?.name ?? `layer ${i}`;
  const reasons = {
    best: 'best sent', requested: 'as asked', bandwidth: 'bandwidth-limited', unavailable: 'layer not sent',
  };
  const thinned = layerState.max_temporal != null ? ` · frame rate /${layerState.max_temporal === 0 ? 4 : 2}` : '';
  const reason = (reasons[layerState.reason] ?? layerState.reason) + thinned;
  return layerState.waiting_keyframe && layerState.target != null
    ? `${reason} · to ${name(layerState.target)} on next keyframe`
    : reason;
}

async function updateLocal() {
  const sender = state.tx.camera?.sender;
  const el = ui.localTile.querySelector('.stats');
  if (!sender || !state.pubPc || state.camMuted) {
    el.textContent = '';
    return;
  }
  const report = await sender.getStats();
  const layers = [];
  let bytes = 0;
  let timestamp = 0;
  let limitation = 'none';
  let svc = '';
  report.forEach((r) => {
    if (r.type !== 'outbound-rtp' || r.kind !== 'video') return;
    bytes += r.bytesSent ?? 0;
    timestamp = Math.max(timestamp, r.timestamp);
    if (r.qualityLimitationReason && r.qualityLimitationReason !== 'none') limitation = r.qualityLimitationReason;
    // An SVC camera (`?svc=`) is one encoding: its size is the top spatial layer's; say its mode.
    if (state.cameraSvc && r.scalabilityMode) svc = r.scalabilityMode;
    if (r.frameWidth && r.active !== false) layers.push({ rid: r.rid ?? '', width: r.frameWidth, height: r.frameHeight, fps: Math.round(r.framesPerSecond ?? 0) });
  });
  const before = previous.get('local');
  previous.set('local', { bytes, timestamp });
  const kbps = before && timestamp > before.timestamp ? ((bytes - before.bytes) * 8) / (timestamp - before.timestamp) : 0;
  layers.sort((a, b) => b.width - a.width);
  el.textContent = layers.length
    ? `sending ${layers.map((l) => `${l.width}×${l.height}`).join(', ')}${svc ? ` (${svc})` : ''}\n${layers[0].fps} fps · ${formatRate(kbps)}` +
      (limitation !== 'none' ? ` · ${limitation}-limited` : '')
    : 'starting camera…';
}

/** kbit/s (bits per millisecond) as text. */
function formatRate(kbps) {
  return kbps >= 1000 ? `${(kbps / 1000).toFixed(1)} Mbps` : `${Math.round(kbps)} kbps`;
}
