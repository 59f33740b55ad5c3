// The frame transforms of end-to-end encryption (see e2ee.js): AES-GCM over each encoded frame
// but its first few bytes, which stay clear (and authenticated) for the packetizer and the
// server. Wire format of a frame: clear bytes, ciphertext with its 16-byte tag, 12-byte IV, one
// byte giving the number of clear bytes. A frame that does not decrypt is dropped.

const IV_BYTES = 12;
const TAG_BYTES = 16;
const counts = { encrypted: 0, decrypted: 0, failed: 0 };
let reported = 0;

/** Bytes left clear: a VP8 keyframe's header (10) or a delta frame's (3); one Opus TOC byte. */
function clearBytes(frame) {
  if (typeof frame.type === 'string') {
    const mime = frame.getMetadata?.().mimeType?.toLowerCase() ?? 'video/vp8';
    if (mime === 'video/vp8') return frame.type === 'key' ? 10 : 3;
    return 0;
  }
  return 1;
}

function report() {
  const now = Date.now();
  if (now - reported < 500) return;
  reported = now;
  self.postMessage({ ...counts });
}

async function encrypt(frame, controller, key) {
  const data = new Uint8Array(frame.data);
  const clear = Math.min(clearBytes(frame), data.length);
  const iv = crypto.getRandomValues(new Uint8Array(IV_BYTES));
  const sealed = new Uint8Array(await crypto.subtle.encrypt(
    { name: 'AES-GCM', iv, additionalData: data.subarray(0, clear) }, key, data.subarray(clear)));
  const out = new Uint8Array(clear + sealed.length + IV_BYTES + 1);
  out.set(data.subarray(0, clear), 0);
  out.set(sealed, clear);
  out.set(iv, clear + sealed.length);
  out[out.length - 1] = clear;
  frame.data = out.buffer;
  counts.encrypted += 1;
  controller.enqueue(frame);
}

async function decrypt(frame, controller, key) {
  const data = new Uint8Array(frame.data);
  const clear = data.length > 0 ? data[data.length - 1] : 0;
  const sealedEnd = data.length - 1 - IV_BYTES;
  try {
    if (sealedEnd - clear < TAG_BYTES) throw new Error('too short');
    const iv = data.subarray(sealedEnd, sealedEnd + IV_BYTES);
    const plain = new Uint8Array(await crypto.subtle.decrypt(
      { name: 'AES-GCM', iv, additionalData: data.subarray(0, clear) }, key, data.subarray(clear, sealedEnd)));
    const out = new Uint8Array(clear + plain.length);
    out.set(data.subarray(0, clear), 0);
    out.set(plain, clear);
    frame.data = out.buffer;
    counts.decrypted += 1;
    controller.enqueue(frame);
  } catch {
    // Another passphrase, or none: nothing to decode.
    counts.failed += 1;
  }
}

self.onrtctransform = (event) => {
  const { readable, writable, options } = event.transformer;
  const step = options.operation === 'encrypt' ? encrypt : decrypt;
  readable
    .pipeThrough(new TransformStream({
      transform: async (frame, controller) => {
        await step(frame, controller, options.key);
        report();
      },
    }))
    .pipeTo(writable)
    .catch(() => {});
};
