// The participant grid: one tile per remote participant who publishes (camera video, audio, name,
// muted badges, active-speaker highlight, quality menu), one tile per screen share, and our own
// self-view and screen tiles. Keeps the room's participants and tracks in `state`.

import { state } from './state.js';
import { ui, playMedia } from './ui.js';

/** Quality menu choices (PROTOCOL.md `set_quality`). */
export const QUALITIES = ['auto', 'high', 'medium', 'low'];

// ---------------------------------------------------------------------------------------------
// Participants and tracks, from signalling messages.
// ---------------------------------------------------------------------------------------------

export function addParticipant(p) {
  if (!p?.id || p.id === state.participantId) return;
  const participant = ensureParticipant(p.id);
  participant.identity = p.identity ?? participant.identity;
  participant.name = p.name || p.identity || participant.name;
  renderParticipant(participant);
}

export function removeParticipant(id) {
  for (const [trackId, info] of state.trackInfo) {
    if (info.participant === id) forgetTrack(trackId);
  }
  const participant = state.remoteParticipants.get(id);
  if (!participant) return;
  for (const [trackId, screen] of state.screenTiles) {
    if (screen.participant === id) removeScreenTile(trackId);
  }
  detachMedia(participant.tile);
  participant.tile.remove();
  state.remoteParticipants.delete(id);
  state.speakers.delete(id);
  renderPeopleCount();
}

/** A track object from `joined` or `track_published` (not ours). */
export function onTrackPublished(track) {
  state.trackInfo.set(track.id, {
    id: track.id,
    participant: track.participant,
    kind: track.kind,
    source: track.source,
    simulcast: Array.isArray(track.simulcast) ? track.simulcast : [],
    muted: !!track.muted,
  });
  const participant = ensureParticipant(track.participant);
  renderParticipant(participant);
}

export function onTrackUnpublished(trackId, participantId) {
  const participant = state.remoteParticipants.get(participantId ?? state.trackInfo.get(trackId)?.participant);
  forgetTrack(trackId);
  if (participant) {
    participant.tracks.delete(trackId);
    renderParticipant(participant);
  }
}

/**
 * `layer_state` for a track we receive. A track without simulcast RIDs that the server says
 * offers several layers carries them in one stream (SVC): from then on its tile gets the quality
 * menu and its stats overlay names the layer, as for simulcast.
 */
export function onLayerState(msg) {
  if (!msg?.track) return;
  const was = isLayered(msg.track);
  state.layerStates.set(msg.track, msg);
  if (was || !isLayered(msg.track)) return;
  const participant = state.remoteParticipants.get(state.trackInfo.get(msg.track)?.participant);
  if (participant) renderParticipant(participant);
}

/** Whether a video track has layers to choose from: simulcast RIDs, or `layer_state.layers`. */
export function isLayered(trackId) {
  return (state.trackInfo.get(trackId)?.simulcast?.length ?? 0) > 1 || state.layerStates.get(trackId)?.layers > 1;
}

export function onTrackMuted(trackId, participantId, muted) {
  const info = state.trackInfo.get(trackId);
  if (info) info.muted = !!muted;
  const participant = state.remoteParticipants.get(participantId ?? info?.participant);
  if (participant) renderParticipant(participant);
}

/** A remote MediaStreamTrack arrived on the subscribe connection for `info` ({track, participant, kind}). */
export function attachRemoteTrack(info, mediaTrack) {
  const participant = ensureParticipant(info.participant);
  participant.tracks.set(info.track, mediaTrack);
  if (!state.trackInfo.has(info.track)) {
    state.trackInfo.set(info.track, {
      id: info.track, participant: info.participant, kind: mediaTrack.kind, source: undefined, simulcast: [], muted: false,
    });
  }
  renderParticipant(participant);
}

function forgetTrack(trackId) {
  state.trackInfo.delete(trackId);
  state.qualities.delete(trackId);
  state.layerStates.delete(trackId);
  for (const [mid, info] of state.subMids) {
    if (info.track === trackId) state.subMids.delete(mid);
  }
}

/** `active_speakers`: highlight the tiles of who is speaking now. */
export function setSpeakers(speakers) {
  state.speakers = new Set((speakers ?? []).map((s) => s.participant));
  for (const participant of state.remoteParticipants.values()) {
    participant.tile.classList.toggle('speaking', state.speakers.has(participant.id));
  }
  ui.localTile.classList.toggle('speaking', !!state.participantId && state.speakers.has(state.participantId));
}

/** Removes every remote tile and forgets the room (on leave or before a rejoin). */
export function clearRoom() {
  for (const participant of state.remoteParticipants.values()) {
    detachMedia(participant.tile);
    participant.tile.remove();
  }
  for (const trackId of [...state.screenTiles.keys()]) removeScreenTile(trackId);
  state.remoteParticipants.clear();
  state.trackInfo.clear();
  state.qualities.clear();
  state.sentPreferences.clear();
  state.layerStates.clear();
  state.speakers.clear();
  ui.localTile.classList.remove('speaking');
  renderPeopleCount();
}

// ---------------------------------------------------------------------------------------------
// Remote tiles.
// ---------------------------------------------------------------------------------------------

/** The participant's entry, created (with its tile, not yet shown) on first use. */
function ensureParticipant(id) {
  let participant = state.remoteParticipants.get(id);
  if (participant) return participant;
  const tile = newTile('tile');
  tile.dataset.participantId = id;
  const videoEl = tile.querySelector('video');
  const audioEl = document.createElement('audio');
  audioEl.autoplay = true;
  tile.append(audioEl);
  videoEl.dataset.participant = id;
  audioEl.dataset.participant = id;
  participant = { id, identity: '', name: id, tile, videoEl, audioEl, tracks: new Map() };
  state.remoteParticipants.set(id, participant);
  return participant;
}

/** A tile from the template; `testid` is 'tile' or 'screen-tile'. */
function newTile(testid) {
  const tile = ui.tileTemplate.content.firstElementChild.cloneNode(true);
  tile.dataset.testid = testid;
  const select = tile.querySelector('select.quality');
  select.replaceChildren(...QUALITIES.map((q) => new Option(q[0].toUpperCase() + q.slice(1), q)));
  select.addEventListener('change', () => {
    const trackId = select.dataset.track;
    if (!trackId) return;
    state.qualities.set(trackId, select.value);
    sendVideoPreference(trackId, tile.querySelector('video'));
  });
  viewSizes.observe(tile.querySelector('video'));
  return tile;
}

/** How long a view's size must be stable before the server is told. */
const RESIZE_SETTLE_MS = 500;

/** Tells the server when a tile's video changes size (for `auto` quality). */
const viewSizes = new ResizeObserver((entries) => {
  for (const { target } of entries) {
    clearTimeout(target.resizeTimer);
    target.resizeTimer = setTimeout(() => sendVideoPreference(target.dataset.track, target), RESIZE_SETTLE_MS);
  }
});

/**
 * `set_quality` for a remote video track: the tile's menu choice and, in `auto`, the size the
 * video is shown at (device pixels), so the server sends no larger layer than the tile needs.
 * Not sent again while unchanged.
 */
export function sendVideoPreference(trackId, videoEl) {
  if (!trackId) return;
  const quality = state.qualities.get(trackId) ?? 'auto';
  const msg = { type: 'set_quality', track: trackId, quality };
  const scale = window.devicePixelRatio || 1;
  const width = Math.round((videoEl?.clientWidth ?? 0) * scale);
  const height = Math.round((videoEl?.clientHeight ?? 0) * scale);
  if (quality === 'auto' && width > 0 && height > 0) Object.assign(msg, { width, height });
  const json = JSON.stringify(msg);
  if (state.sentPreferences.get(trackId) === json) return;
  // Nothing to say yet for a track never asked about that has no size.
  if (!state.sentPreferences.has(trackId) && quality === 'auto' && !msg.width) return;
  state.sentPreferences.set(trackId, json);
  state.signalling?.send(msg);
}

/**
 * What a track carries: the server's `source`, or for a server that does not say, the
 * participant's first video track is the camera and any other one a screen.
 */
function sourceOf(trackId, participant) {
  const info = state.trackInfo.get(trackId);
  if (info?.source) return info.source;
  const kind = info?.kind ?? participant.tracks.get(trackId)?.kind;
  if (kind === 'audio') return 'microphone';
  const firstVideo = [...participant.tracks].find(([, t]) => t.kind === 'video')?.[0];
  return !firstVideo || firstVideo === trackId ? 'camera' : 'screen';
}

const isMuted = (trackId) => state.trackInfo.get(trackId)?.muted === true;

/** Brings a participant's tile (and screen tiles) in line with their name, tracks and mute state. */
function renderParticipant(participant) {
  const { tile, videoEl, audioEl } = participant;
  const videos = [];
  const audios = [];
  for (const [trackId, track] of participant.tracks) {
    (track.kind === 'video' ? videos : audios).push({ trackId, track, source: sourceOf(trackId, participant) });
  }
  const camera = videos.find((v) => v.source !== 'screen');
  const screens = videos.filter((v) => v !== camera);

  setElementTracks(videoEl, camera ? [camera] : []);
  videoEl.dataset.track = camera?.trackId ?? '';
  setElementTracks(audioEl, audios);

  const published = [...state.trackInfo.values()].filter((t) => t.participant === participant.id);
  const cameraInfo = published.find((t) => t.kind === 'video' && t.source !== 'screen');
  const micInfo = published.find((t) => t.kind === 'audio' && t.source !== 'screen_audio');
  const cameraOff = !camera || isMuted(camera.trackId);
  tile.classList.toggle('no-video', cameraOff);
  tile.querySelector('.badge.cam-off').hidden = !cameraInfo?.muted;
  tile.querySelector('.badge.mic-off').hidden = !micInfo?.muted;
  tile.classList.toggle('speaking', state.speakers.has(participant.id));
  setName(tile, participant.name);
  setQualityMenu(tile, camera?.trackId, cameraOff);

  // Shown only while they publish something: viewers have no tile.
  const shown = published.length > 0 || participant.tracks.size > 0;
  if (shown && !tile.isConnected) ui.tiles.append(tile);
  if (!shown && tile.isConnected) {
    detachMedia(tile);
    tile.remove();
  }

  const wanted = new Set(screens.map((s) => s.trackId));
  for (const [trackId, screen] of state.screenTiles) {
    if (screen.participant === participant.id && !wanted.has(trackId)) removeScreenTile(trackId);
  }
  for (const screen of screens) renderScreenTile(participant, screen);
  renderPeopleCount();
}

function setName(tile, name) {
  tile.querySelector('.tile-name').textContent = name;
  tile.querySelector('.avatar').textContent = initials(name);
}

function initials(name) {
  const parts = String(name).trim().split(/\s+/).filter(Boolean);
  if (parts.length === 0) return '?';
  return (parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : parts[0][0]).toUpperCase();
}

/** The quality menu is for layered (simulcast or SVC) video: hidden when there is nothing to choose from. */
function setQualityMenu(tile, trackId, off) {
  const select = tile.querySelector('select.quality');
  select.hidden = !trackId || off || !isLayered(trackId);
  select.dataset.track = trackId ?? '';
  if (trackId) {
    select.value = state.qualities.get(trackId) ?? 'auto';
    sendVideoPreference(trackId, tile.querySelector('video'));
  }
}

function renderScreenTile(participant, { trackId, track }) {
  let screen = state.screenTiles.get(trackId);
  if (!screen) {
    const tile = newTile('screen-tile');
    tile.classList.add('screen');
    tile.dataset.participantId = participant.id;
    const videoEl = tile.querySelector('video');
    videoEl.dataset.participant = participant.id;
    screen = { trackId, participant: participant.id, tile, videoEl };
    state.screenTiles.set(trackId, screen);
    // Screen shares go first: they are what everyone looks at.
    ui.tiles.prepend(tile);
  }
  setElementTracks(screen.videoEl, [{ trackId, track }]);
  screen.videoEl.dataset.track = trackId;
  setName(screen.tile, `${participant.name}'s screen`);
  setQualityMenu(screen.tile, trackId, false);
  screen.tile.classList.toggle('no-video', isMuted(trackId));
}

function removeScreenTile(trackId) {
  const screen = state.screenTiles.get(trackId);
  if (!screen) return;
  detachMedia(screen.tile);
  screen.tile.remove();
  state.screenTiles.delete(trackId);
}

/** Points a media element at exactly these tracks; leaves it alone if nothing changed. */
function setElementTracks(el, entries) {
  const key = entries.map((e) => e.trackId).join(',');
  if (el.dataset.tracks === key && (entries.length === 0 || el.srcObject)) return;
  el.dataset.tracks = key;
  if (entries.length === 0) {
    el.srcObject = null;
    return;
  }
  el.srcObject = new MediaStream(entries.map((e) => e.track));
  playMedia(el);
}

function detachMedia(root) {
  for (const el of root.querySelectorAll('video, audio')) {
    el.srcObject = null;
    delete el.dataset.tracks;
  }
}

function renderPeopleCount() {
  if (state.phase === 'idle') return;
  const n = 1 + state.remoteParticipants.size;
  ui.peopleCount.textContent = n === 1 ? 'just you' : `${n} people`;
}

// ---------------------------------------------------------------------------------------------
// Our own tiles: the self-view, and our screen while we share it.
// ---------------------------------------------------------------------------------------------

export function renderLocal() {
  const stream = state.localStream;
  const hasVideo = !!stream?.getVideoTracks().length;
  ui.localTile.hidden = !stream;
  if (ui.localVideo.srcObject !== (hasVideo ? stream : null)) {
    ui.localVideo.srcObject = hasVideo ? stream : null;
    if (hasVideo) playMedia(ui.localVideo);
  }
  ui.localTile.classList.toggle('no-video', !hasVideo || state.camMuted);
  ui.localTile.querySelector('.badge.cam-off').hidden = !state.camMuted;
  ui.localTile.querySelector('.badge.mic-off').hidden = !state.micMuted;
  ui.localTile.querySelector('.avatar').textContent = initials(state.displayName);
  ui.localName.textContent = `${state.displayName} (you)`;
  renderLocalScreen();
  renderPeopleCount();
}

function renderLocalScreen() {
  let tile = document.getElementById('local-screen-tile');
  const stream = state.screenStream;
  if (!stream) {
    if (tile) {
      detachMedia(tile);
      tile.remove();
    }
    return;
  }
  if (!tile) {
    tile = newTile('local-screen-tile');
    tile.id = 'local-screen-tile';
    tile.classList.add('screen', 'local-screen');
    tile.querySelector('select.quality').hidden = true;
    setName(tile, 'Your screen');
    ui.tiles.prepend(tile);
  }
  const video = tile.querySelector('video');
  if (video.srcObject !== stream) {
    video.srcObject = stream;
    playMedia(video);
  }
}

/**
 * The tiles whose overlay shows receive stats: {statsEl, track, trackId, simulcast, layered}
 * (`simulcast` the track's RIDs, `layered` whether it has layers to choose from; see isLayered).
 */
export function remoteVideoTiles() {
  const out = [];
  for (const participant of state.remoteParticipants.values()) {
    const trackId = participant.videoEl.dataset.track;
    const track = trackId && participant.tracks.get(trackId);
    if (track && participant.tile.isConnected) {
      out.push({ statsEl: participant.tile.querySelector('.stats'), track, trackId, simulcast: state.trackInfo.get(trackId)?.simulcast ?? [], layered: isLayered(trackId) });
    }
  }
  for (const screen of state.screenTiles.values()) {
    const track = state.remoteParticipants.get(screen.participant)?.tracks.get(screen.trackId);
    if (track) out.push({ statsEl: screen.tile.querySelector('.stats'), track, trackId: screen.trackId, simulcast: state.trackInfo.get(screen.trackId)?.simulcast ?? [], layered: isLayered(screen.trackId) });
  }
  return out;
}
