// End-to-end encryption through the SFU (`?e2ee=PASSPHRASE`): alice and bob publish with the
// same passphrase; carol watches with another one. Every frame is encrypted in the sender's page
// and decrypted in the receiver's (web-demo/e2ee.js), so the server forwards what it cannot
// read. Alice and bob see and hear each other; carol receives the same packets but decodes
// nothing (her frames fail to decrypt and are dropped). The server still switches simulcast
// layers on keyframes (the VP8 header bytes it reads stay clear): bob's quality menu takes
// alice's camera to 320 and back to 1280 wide.
//
//   cd web-demo/tests && npm install && node --test e2ee.test.mjs
//
// Environment: see harness.mjs. Every wait is bounded; a watchdog ends the run after 150 s.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  stopServer, startWatchdog, closeParticipant, callUrl, sleep, withTimeout, chooseQuality, pollUntil,
  startServerAndParticipants,
} from './harness.mjs';

const TOTAL_BUDGET_MS = 150_000;
const JOIN_MS = 25_000;
const STEP_MS = 20_000;
const SAMPLE_MS = 3_000;
const PASSPHRASE = `call-${randomBytes(6).toString('hex')}`;

const stopWatchdog = startWatchdog(TOTAL_BUDGET_MS);
after(() => stopWatchdog());

/** In-page: `name`'s camera tile as this page receives it, and the page's e2ee counts. */
async function receivedVideo([name]) {
  const { state } = window.sfuDemo;
  const tile = [...document.querySelectorAll('[data-testid="tile"]')]
    .find((t) => t.querySelector('.tile-name')?.textContent === name);
  const out = { e2ee: { ...(window.e2eeStats ?? {}) } };
  if (!tile) return out;
  const video = tile.querySelector('video');
  const trackId = video.dataset.track;
  Object.assign(out, { videoWidth: video.videoWidth, overlay: tile.querySelector('.stats').textContent });
  const track = trackId && state.remoteParticipants.get(tile.dataset.participantId)?.tracks.get(trackId);
  const receiver = track && state.subPc?.getReceivers().find((r) => r.track === track);
  if (!receiver) return out;
  const report = await receiver.getStats();
  report.forEach((r) => {
    if (r.type !== 'inbound-rtp' || r.kind !== 'video') return;
    Object.assign(out, {
      codec: r.codecId ? report.get(r.codecId)?.mimeType?.toLowerCase() : undefined,
      packetsReceived: r.packetsReceived ?? 0,
      framesReceived: r.framesReceived ?? 0,
      framesDecoded: r.framesDecoded ?? 0,
    });
  });
  // The participant's audio: energy grows only if it decrypts.
  const audio = state.subPc?.getReceivers().filter((r) => r.track.kind === 'audio') ?? [];
  out.audioEnergy = 0;
  for (const r of audio) {
    (await r.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp') out.audioEnergy += s.totalAudioEnergy ?? 0;
    });
  }
  return out;
}

describe('end-to-end encryption: the same passphrase sees and hears, another decodes nothing', () => {
  const room = `e2ee-${randomBytes(4).toString('hex')}`;
  const started = {};
  let alice;
  let bob;
  let carol;
  const everyone = () => Object.values(started);

  before(async () => {
    const base = await startServerAndParticipants(['alice', 'bob', 'carol'], started);
    ({ alice, bob, carol } = started);
    await Promise.all([alice, bob].map((p) => p.page.goto(callUrl(base, room, p.name, { e2ee: PASSPHRASE }), { waitUntil: 'load' })));
    await carol.page.goto(callUrl(base, room, carol.name, { role: 'viewer', e2ee: 'another passphrase' }), { waitUntil: 'load' });
  }, { timeout: 60_000 });

  after(async () => {
    await Promise.all(everyone().map(closeParticipant));
    await stopServer();
  }, { timeout: 30_000 });

  it('alice and bob decode each other\'s camera and hear each other', { timeout: JOIN_MS + SAMPLE_MS + 15_000 }, async (t) => {
    for (const [viewer, other] of [[alice, 'bob'], [bob, 'alice']]) {
      const first = await pollUntil(viewer, `decodes ${other}'s camera`, receivedVideo, [other],
        (v) => v?.framesDecoded > 10 && v.videoWidth > 0 && v.audioEnergy > 0, { timeout: JOIN_MS });
      await sleep(SAMPLE_MS);
      const second = await withTimeout(viewer.page.evaluate(receivedVideo, [other]), 5_000, 'reading the tile');
      const detail = `${viewer.name} <- ${other}: ${JSON.stringify(first)} -> ${JSON.stringify(second)}`;
      t.diagnostic(detail);
      assert.equal(second.codec, 'video/vp8', `the camera is sent in VP8 with ?e2ee; ${detail}`);
      assert.ok(second.framesDecoded - first.framesDecoded >= 5 * (SAMPLE_MS / 1_000), `video keeps decoding; ${detail}`);
      assert.ok(second.audioEnergy > first.audioEnergy, `audio is heard; ${detail}`);
      assert.ok(second.e2ee.decrypted > 0 && second.e2ee.encrypted > 0, `frames went through the e2ee worker; ${detail}`);
      assert.match(second.overlay ?? '', /\ne2ee$/, `the overlay says the call is encrypted; ${detail}`);
    }
  });

  it('carol, with another passphrase, receives the packets but decodes nothing', { timeout: JOIN_MS + SAMPLE_MS + 15_000 }, async (t) => {
    const first = await pollUntil(carol, 'receives alice\'s video packets', receivedVideo, ['alice'],
      (v) => v?.packetsReceived > 100, { timeout: JOIN_MS });
    await sleep(SAMPLE_MS);
    const second = await withTimeout(carol.page.evaluate(receivedVideo, ['alice']), 5_000, 'reading the tile');
    const detail = `${JSON.stringify(first)} -> ${JSON.stringify(second)}`;
    t.diagnostic(`carol: ${detail}`);
    assert.ok(second.packetsReceived - first.packetsReceived > 50, `the server forwards to her; ${detail}`);
    assert.equal(second.framesDecoded, 0, `no frame decoded; ${detail}`);
    assert.equal(second.audioEnergy, 0, `nothing heard; ${detail}`);
    assert.equal(second.e2ee.decrypted, 0, `no frame decrypted; ${detail}`);
    assert.ok(second.e2ee.failed > 50, `her frames fail to decrypt; ${detail}`);
  });

  it('the server switches bob between alice\'s layers on keyframes it finds in encrypted frames', { timeout: 2 * STEP_MS + 10_000 }, async () => {
    await bob.page.evaluate(chooseQuality, ['alice', 'low']);
    await pollUntil(bob, 'decodes alice\'s camera 320 wide', receivedVideo, ['alice'], (v) => v?.videoWidth === 320);
    await bob.page.evaluate(chooseQuality, ['alice', 'high']);
    const high = await pollUntil(bob, 'decodes alice\'s camera 1280 wide', receivedVideo, ['alice'], (v) => v?.videoWidth === 1280);
    assert.ok(high.e2ee.failed === 0, `bob never failed to decrypt: ${JSON.stringify(high.e2ee)}`);
  });

  it('no console errors in any page', () => {
    assert.deepEqual(everyone().flatMap((p) => p.errors), []);
  });
});
