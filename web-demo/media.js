// Local devices: the camera and microphone pickers and the preview on the join screen, getting
// the camera and microphone for the call, and capturing the screen. Turns getUserMedia errors
// into sentences people can act on.

import { state } from './state.js';
import { ui, playMedia } from './ui.js';

const STORE = { camera: 'sfu-demo.camera', mic: 'sfu-demo.mic' };

/**
 * The camera is asked for at 1280x720: the browser only sends the simulcast layers the capture
 * size allows, so a smaller capture would lose the top layer (1280x720, 640x360, 320x180). An
 * SVC camera (`?svc=L3T3_KEY`) scales its spatial layers from the capture the same way.
 */
function videoConstraints(deviceId) {
  return {
    width: { ideal: 1280 },
    height: { ideal: 720 },
    ...(deviceId ? { deviceId: { exact: deviceId } } : {}),
  };
}

function audioConstraints(deviceId) {
  return deviceId ? { deviceId: { exact: deviceId } } : true;
}

/** A sentence about a getUserMedia / getDisplayMedia failure. */
export function describeMediaError(err) {
  switch (err?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Camera and microphone access was denied. Allow it in the browser\'s site settings ' +
        '(the icon left of the address), then join again.';
    case 'NotFoundError':
      return 'No camera or microphone was found.';
    case 'NotReadableError':
    case 'AbortError':
      return 'The camera or microphone is in use by another application, or the system blocked it.';
    case 'OverconstrainedError':
      return 'The chosen camera or microphone is not available any more.';
    case 'InsecureContext':
      return 'Camera and microphone need a secure page (https, or http://localhost).';
    default:
      return `Could not use the camera or microphone (${err?.name ?? 'error'}: ${err?.message ?? err}).`;
  }
}

/** The devices chosen in the pickers ('' = the browser's default). */
export function chosenDevices() {
  // Until access is granted the pickers cannot list the remembered devices: use the memory.
  return {
    cameraId: ui.cameraSelect.value || localStorage.getItem(STORE.camera) || '',
    micId: ui.micSelect.value || localStorage.getItem(STORE.mic) || '',
  };
}

/**
 * Gets the camera and microphone. Falls back to just one of them when the other fails (but not
 * after a refusal: we don't ask twice). Resolves with {stream, error}: `stream` null when
 * nothing could be had, `error` the first failure (also set when only one device worked).
 */
export async function getLocalMedia({ cameraId = '', micId = '' } = {}) {
  if (!navigator.mediaDevices?.getUserMedia) {
    return { stream: null, error: { name: 'InsecureContext', message: '' } };
  }
  const video = videoConstraints(cameraId);
  const audio = audioConstraints(micId);
  const attempts = [{ audio, video }, { audio }, { video }];
  let firstError = null;
  for (const constraints of attempts) {
    try {
      const stream = await navigator.mediaDevices.getUserMedia(constraints);
      return { stream, error: firstError };
    } catch (err) {
      firstError ??= err;
      if (err.name === 'NotAllowedError' || err.name === 'SecurityError') break;
      if (err.name === 'OverconstrainedError' && (cameraId || micId)) {
        // A remembered device is gone: try the defaults.
        return getLocalMedia({});
      }
    }
  }
  return { stream: null, error: firstError };
}

/** Captures the screen (with its audio when the user shares it). Throws on refusal. */
export function getScreen() {
  if (!navigator.mediaDevices?.getDisplayMedia) {
    throw new Error('this browser cannot share the screen');
  }
  return navigator.mediaDevices.getDisplayMedia({
    video: { frameRate: { ideal: 15, max: 30 } },
    audio: true,
  });
}

// ---------------------------------------------------------------------------------------------
// Join screen: pickers and preview.
// ---------------------------------------------------------------------------------------------

let previewRun = 0;

/** Starts (or restarts, after a picker changed) the preview on the join screen. */
export async function startPreview() {
  const run = ++previewRun;
  stopPreview();
  if (ui.viewerInput.checked || ui.joinView.hidden) return;
  const { stream, error } = await getLocalMedia(chosenDevices());
  if (run !== previewRun || ui.viewerInput.checked || ui.joinView.hidden) {
    // Superseded (another picker change, or the user joined meanwhile).
    stream?.getTracks().forEach((t) => t.stop());
    return;
  }
  state.previewStream = stream;
  ui.previewVideo.srcObject = stream?.getVideoTracks().length ? stream : null;
  if (ui.previewVideo.srcObject) playMedia(ui.previewVideo);
  ui.preview.classList.toggle('no-video', !ui.previewVideo.srcObject);
  ui.previewMessage.textContent = error ? describeMediaError(error) : '';
  ui.previewMessage.hidden = !error;
  await fillDevicePickers();
}

export function stopPreview() {
  state.previewStream?.getTracks().forEach((t) => t.stop());
  state.previewStream = null;
  ui.previewVideo.srcObject = null;
  ui.preview.classList.add('no-video');
}

/**
 * Hands the preview over to the call, if it has what was chosen; the caller owns it then.
 * Returns null when there is no usable preview.
 */
export function takePreview() {
  previewRun++;
  const stream = state.previewStream;
  state.previewStream = null;
  ui.previewVideo.srcObject = null;
  if (stream && stream.getTracks().every((t) => t.readyState === 'live')) return stream;
  stream?.getTracks().forEach((t) => t.stop());
  return null;
}

/** Lists cameras and microphones in the pickers (labels appear once access was granted). */
export async function fillDevicePickers() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  let devices;
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch {
    return;
  }
  const fill = (select, kind, noun, storeKey) => {
    const current = select.value || localStorage.getItem(storeKey) || '';
    const options = [new Option(`Default ${noun}`, '')];
    let n = 0;
    for (const d of devices) {
      if (d.kind !== kind || !d.deviceId || d.deviceId === 'default') continue;
      n++;
      options.push(new Option(d.label || `${noun} ${n}`, d.deviceId));
    }
    select.replaceChildren(...options);
    select.value = options.some((o) => o.value === current) ? current : '';
  };
  fill(ui.cameraSelect, 'videoinput', 'camera', STORE.camera);
  fill(ui.micSelect, 'audioinput', 'microphone', STORE.mic);
}

export function initDevicePickers() {
  const onChange = (select, key) => () => {
    localStorage.setItem(key, select.value);
    startPreview();
  };
  ui.cameraSelect.addEventListener('change', onChange(ui.cameraSelect, STORE.camera));
  ui.micSelect.addEventListener('change', onChange(ui.micSelect, STORE.mic));
  ui.viewerInput.addEventListener('change', () => {
    ui.cameraSelect.disabled = ui.viewerInput.checked;
    ui.micSelect.disabled = ui.viewerInput.checked;
    if (ui.viewerInput.checked) {
      stopPreview();
      ui.previewMessage.textContent = 'Viewers watch and listen without a camera or microphone.';
      ui.previewMessage.hidden = false;
    } else {
      ui.previewMessage.hidden = true;
      startPreview();
    }
  });
  navigator.mediaDevices?.addEventListener?.('devicechange', () => fillDevicePickers());
}
