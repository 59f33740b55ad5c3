// End-to-end encryption (`?e2ee=PASSPHRASE`): every encoded frame this page sends is encrypted
// before it is packetized, and every frame it receives is decrypted before it is decoded, with
// an AES-GCM key derived from the passphrase (PBKDF2-SHA-256). The server forwards what it
// cannot read: everyone in the call with the same passphrase sees and hears each other, anyone
// else decodes nothing (their frames fail to decrypt and are dropped).
//
// The work happens in a worker (`e2ee-worker.js`, one `RTCRtpScriptTransform` per sender and
// receiver). A few bytes at the start of each frame stay clear, as LiveKit and Jitsi leave
// them, so the server still sees keyframes and picture sizes: a VP8 keyframe's 10-byte header
// (3 bytes of a delta frame), the Opus TOC byte. Codecs whose packetizer reads the frame itself
// (H264, AV1) cannot be encrypted this way; with `?e2ee` the camera is sent in VP8 (or VP9).
// RED is left out too, as LiveKit does: the transform would encrypt RED's own headers, which the
// server reads to strip RED for viewers without it.

import { state } from './state.js';

/** Salt of the key derivation: the same for everyone, so a passphrase is all a call needs. */
const SALT = 'sfu-demo-e2ee-v1';
const ITERATIONS = 100_000;

/** Codecs whose RTP packetizer does not parse the encoded frame (so it may be encrypted). */
export const E2EE_VIDEO_CODECS = ['vp8', 'vp9'];

let worker = null;

/** Whether this page encrypts (`?e2ee=` given and supported). */
export function e2eeEnabled() {
  return state.e2ee != null;
}

/**
 * Derives the key from `?e2ee=` (if given) before the call connects. Throws, saying why, when
 * the browser cannot transform encoded frames.
 */
export async function setUpE2ee(passphrase) {
  state.e2ee = null;
  if (!passphrase) return;
  if (typeof RTCRtpScriptTransform !== 'function') {
    throw new Error('this browser cannot encrypt media end to end (no RTCRtpScriptTransform)');
  }
  const material = await crypto.subtle.importKey('raw', new TextEncoder().encode(passphrase), 'PBKDF2', false, ['deriveKey']);
  const key = await crypto.subtle.deriveKey(
    { name: 'PBKDF2', salt: new TextEncoder().encode(SALT), iterations: ITERATIONS, hash: 'SHA-256' },
    material, { name: 'AES-GCM', length: 128 }, false, ['encrypt', 'decrypt'],
  );
  worker ??= new Worker(new URL('./e2ee-worker.js', import.meta.url), { name: 'e2ee' });
  const stats = { encrypted: 0, decrypted: 0, failed: 0 };
  worker.onmessage = (event) => {
    const { encrypted, decrypted, failed } = event.data ?? {};
    Object.assign(stats, { encrypted, decrypted, failed });
  };
  state.e2ee = { key, stats };
  // For the tests and the curious: how many frames went through.
  window.e2eeStats = stats;
}

/** Encrypts what `sender` sends (once per sender). */
export function encryptSender(sender) {
  if (!state.e2ee || !sender || sender.transform) return;
  sender.transform = new RTCRtpScriptTransform(worker, { operation: 'encrypt', key: state.e2ee.key });
}

/** Decrypts what `receiver` receives (once per receiver). */
export function decryptReceiver(receiver) {
  if (!state.e2ee || !receiver || receiver.transform) return;
  receiver.transform = new RTCRtpScriptTransform(worker, { operation: 'decrypt', key: state.e2ee.key });
}

/** A line for the stats overlay: frames that did not decrypt, or that the call is encrypted. */
export function e2eeSummary() {
  if (!state.e2ee) return null;
  const { failed, decrypted } = state.e2ee.stats;
  return failed > 0 && decrypted === 0 ? `e2ee: ${failed} frames not decrypted (another passphrase?)` : 'e2ee';
}
