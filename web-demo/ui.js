// Page-level UI: element lookups, the banner, the connection status, switching between the join
// screen and the call, starting media playback, and sizing the tile grid to the window.

const $ = (id) => document.getElementById(id);

export const ui = {
  banner: $('banner'),
  bannerText: $('banner-text'),
  bannerClose: $('banner-close'),

  joinView: $('join-view'),
  joinForm: $('join-form'),
  joinButton: $('join-button'),
  roomInput: $('room-input'),
  nameInput: $('name-input'),
  viewerInput: $('viewer-input'),
  tokenInput: $('token-input'),
  tokenInfo: $('token-info'),
  cameraSelect: $('camera-select'),
  micSelect: $('mic-select'),
  preview: $('preview'),
  previewVideo: $('preview-video'),
  previewMessage: $('preview-message'),

  callView: $('call-view'),
  roomName: $('room-name'),
  peopleCount: $('people-count'),
  connStatus: $('conn-status'),
  micButton: $('mic-button'),
  camButton: $('cam-button'),
  screenButton: $('screen-button'),
  statsButton: $('stats-button'),
  audioUnlockButton: $('audio-unlock-button'),
  leaveButton: $('leave-button'),

  tiles: $('tiles'),
  localTile: $('local-tile'),
  localVideo: $('local-video'),
  localName: $('local-name'),
  tileTemplate: $('tile-template'),

  chatLog: $('chat-log'),
  chatForm: $('chat-form'),
  chatInput: $('chat-input'),
  chatSend: $('chat-send'),
};

/** Shows a message in the banner at the top of the page. `kind` is 'error' or 'info'. */
export function showBanner(text, kind = 'error') {
  ui.bannerText.textContent = text;
  ui.banner.dataset.kind = kind;
  ui.banner.hidden = false;
}

export function hideBanner() {
  ui.banner.hidden = true;
  ui.bannerText.textContent = '';
}

/** The connection status next to the room name; `kind` styles it ('ok', 'busy' or 'bad'). */
export function setStatus(text, kind = 'busy') {
  ui.connStatus.textContent = text;
  ui.connStatus.dataset.kind = kind;
}

/** Shows the join screen or the call. */
export function showView(inCall) {
  ui.joinView.hidden = inCall;
  ui.callView.hidden = !inCall;
  if (inCall) layoutTiles();
}

/** Starts playing a media element; autoplay refusals offer an "Enable audio" button instead of failing. */
export function playMedia(el) {
  const p = el.play();
  if (!p) return;
  p.catch((err) => {
    // Said in the console: a viewer who hears nothing may be one the browser would not let play.
    console.info(`a ${el.tagName.toLowerCase()} element did not start playing: ${err?.name}: ${err?.message}`);
    if (err?.name === 'NotAllowedError') ui.audioUnlockButton.hidden = false;
    // AbortError: the source changed before playback started; the new source plays instead.
  });
}

export function initAudioUnlock() {
  ui.audioUnlockButton.addEventListener('click', () => {
    ui.audioUnlockButton.hidden = true;
    for (const el of document.querySelectorAll('audio, video')) {
      if (el.srcObject) playMedia(el);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Tile grid: picks the number of columns that makes 16:9 tiles as large as the space allows.
// Runs whenever tiles come or go and when the grid is resized.
// ---------------------------------------------------------------------------------------------

const GAP = 10;
const ASPECT = 16 / 9;

export function layoutTiles() {
  const el = ui.tiles;
  const tiles = [...el.children].filter((t) => !t.hidden);
  const n = Math.max(1, tiles.length);
  const style = getComputedStyle(el);
  const width = el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const height = el.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
  if (width <= 0 || height <= 0) return;

  let best = { cols: 1, tileWidth: 0 };
  for (let cols = 1; cols <= n; cols++) {
    const rows = Math.ceil(n / cols);
    const w = Math.min((width - GAP * (cols - 1)) / cols, ((height - GAP * (rows - 1)) / rows) * ASPECT);
    if (w > best.tileWidth) best = { cols, tileWidth: w };
  }
  // Never smaller than a usable size: below it the grid scrolls instead.
  const tileWidth = Math.max(160, Math.floor(best.tileWidth));
  el.style.setProperty('--cols', String(best.cols));
  el.style.setProperty('--tile-w', `${tileWidth}px`);
}

export function initLayout() {
  new ResizeObserver(() => layoutTiles()).observe(ui.tiles);
  // Tiles added or removed, or the self-view hidden (viewers).
  new MutationObserver(() => layoutTiles()).observe(ui.tiles, { childList: true, subtree: true, attributeFilter: ['hidden'] });
}
