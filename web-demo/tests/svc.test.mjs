// VP9 and AV1 SVC through the SFU: alice sends her camera as one stream carrying three spatial
// layers (`?codec=vp9&svc=L3T3_KEY`, then `?codec=av1&svc=L3T3_KEY`: 320x180, 640x360 and
// 1280x720 from a 1280x720 capture; the server reads VP9's layers from its payload descriptor
// and AV1's from the Dependency Descriptor header extension, which it rewrites per viewer);
// bob and carol watch it (as viewers, to keep the load down). The server forwards each of them
// only the spatial layers up to the one they chose: bob's quality menu moves him between the
// layers while carol, in `auto` on a large tile, keeps the top one, and neither picture freezes.
//
//   cd web-demo/tests && npm install && node --test svc.test.mjs
//   SVC_CODECS=av1 node --test svc.test.mjs      # one codec only
//
// Environment: see harness.mjs. Every wait is bounded; a watchdog ends the run after 600 s.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import {
  ARTIFACTS, startServer, stopServer, startWatchdog, launchParticipant, closeParticipant, callUrl,
  waitUntil, describeTiles, sampleRemoteMedia, sleep, withTimeout, chooseQuality, pollUntil,
  startServerAndParticipants,
} from './harness.mjs';

const TOTAL_BUDGET_MS = 600_000;
const JOIN_MS = 20_000;
const SAMPLE_MS = 2_000;
/** One layer switch, or the publisher's encoder ramping up: generous, on a loaded 2-core box. */
const STEP_MS = 20_000;
/** The encoder reaching its top spatial layer needs the bandwidth estimate to grow to ~1.5 Mbps. */
const RAMP_MS = 40_000;
/** How long the steady state is watched for freezes, and how often it is sampled. */
const STEADY_MS = 3_000;
const STEADY_EVERY_MS = 500;
const MODE = 'L3T3_KEY';
const CODECS = (process.env.SVC_CODECS ?? 'vp9,av1').split(',').map((c) => c.trim()).filter(Boolean);

const stopWatchdog = startWatchdog(TOTAL_BUDGET_MS);
after(() => stopWatchdog());

// ---------------------------------------------------------------------------------------------
// In-page helpers (run by page.evaluate; they cannot see this module's scope).
// ---------------------------------------------------------------------------------------------

/**
 * Init script: keeps the page's last `layer_state` messages (the demo keeps only the latest
 * per track) in `window.layerStateLog`, for failure messages. Only observes the socket.
 */
function recordLayerStates() {
  const Native = window.WebSocket;
  window.layerStateLog = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (event) => {
        if (typeof event.data !== 'string' || !event.data.includes('"layer_state"')) return;
        try {
          const { track, current, target, reason, waiting_keyframe: waiting } = JSON.parse(event.data);
          window.layerStateLog.push({ at: Math.round(performance.now()), track, current, target, reason, waiting });
          if (window.layerStateLog.length > 50) window.layerStateLog.shift();
        } catch { /* not ours to judge */ }
      });
    }
  };
}

/** In-page: the receive side of `name`'s camera tile, from the page and its receiver's getStats. */
async function receivedVideo([name]) {
  const { state } = window.sfuDemo;
  const tile = [...document.querySelectorAll('[data-testid="tile"]')]
    .find((t) => t.querySelector('.tile-name')?.textContent === name);
  if (!tile) return null;
  const video = tile.querySelector('video');
  const trackId = video.dataset.track;
  const out = {
    videoWidth: video.videoWidth,
    viewWidth: video.clientWidth,
    quality: state.qualities.get(trackId) ?? 'auto',
    menuHidden: tile.querySelector('select.quality').hidden,
    overlay: tile.querySelector('.stats').textContent,
    simulcast: state.trackInfo.get(trackId)?.simulcast ?? null,
    layerState: state.layerStates.get(trackId) ?? null,
    layerHistory: (window.layerStateLog ?? []).filter((m) => m.track === trackId).slice(-8)
      .map((m) => `${m.at}ms ${m.current}->${m.target} ${m.reason}${m.waiting ? ' waiting' : ''}`),
    sentPreference: state.sentPreferences.get(trackId) ?? null,
  };
  const track = trackId && state.remoteParticipants.get(tile.dataset.participantId)?.tracks.get(trackId);
  const receiver = track && state.subPc?.getReceivers().find((r) => r.track === track);
  if (!receiver) return out;
  const report = await receiver.getStats();
  report.forEach((r) => {
    if (r.type !== 'inbound-rtp' || r.kind !== 'video') return;
    Object.assign(out, {
      codec: r.codecId ? report.get(r.codecId)?.mimeType?.toLowerCase() : undefined,
      frameWidth: r.frameWidth ?? 0,
      frameHeight: r.frameHeight ?? 0,
      framesPerSecond: r.framesPerSecond ?? 0,
      framesReceived: r.framesReceived ?? 0,
      framesDecoded: r.framesDecoded ?? 0,
      framesDropped: r.framesDropped ?? 0,
      keyFramesDecoded: r.keyFramesDecoded ?? 0,
      pliCount: r.pliCount ?? 0,
      firCount: r.firCount ?? 0,
      nackCount: r.nackCount ?? 0,
      packetsLost: r.packetsLost ?? 0,
      freezeCount: r.freezeCount ?? 0,
      totalFreezesDuration: r.totalFreezesDuration ?? 0,
      decoder: r.decoderImplementation,
    });
  });
  return out;
}

/** In-page: what the camera's sender sends (its encodings and outbound-rtp reports) and the self-view overlay. */
async function sentVideo() {
  const { state } = window.sfuDemo;
  const sender = state.tx.camera?.sender;
  if (!sender) return null;
  const report = await sender.getStats();
  const outbound = [];
  report.forEach((r) => {
    if (r.type !== 'outbound-rtp' || r.kind !== 'video') return;
    outbound.push({
      rid: r.rid,
      reportsMode: 'scalabilityMode' in r,
      scalabilityMode: r.scalabilityMode,
      codec: r.codecId ? report.get(r.codecId)?.mimeType?.toLowerCase() : undefined,
      frameWidth: r.frameWidth ?? 0,
      frameHeight: r.frameHeight ?? 0,
      framesPerSecond: r.framesPerSecond ?? 0,
      framesEncoded: r.framesEncoded ?? 0,
      keyFramesEncoded: r.keyFramesEncoded ?? 0,
      pliCount: r.pliCount ?? 0,
      qualityLimitationReason: r.qualityLimitationReason,
      targetBitrate: r.targetBitrate,
      encoder: r.encoderImplementation,
    });
  });
  return {
    cameraSvc: state.cameraSvc,
    encodings: (sender.getParameters().encodings ?? []).map((e) => ({ rid: e.rid, scalabilityMode: e.scalabilityMode, active: e.active })),
    outbound,
    overlay: document.querySelector('#local-tile .stats')?.textContent ?? '',
  };
}

// ---------------------------------------------------------------------------------------------
// Waiting on getStats (async in the page, so polled from here: harness.mjs's pollUntil).
// ---------------------------------------------------------------------------------------------

/** Waits until `viewer` decodes alice's camera `width` wide (or, with `above`, wider than that). */
function aliceWidthAt(viewer, width, { above = false, timeout = STEP_MS } = {}) {
  return pollUntil(viewer, `decodes alice's camera ${above ? `more than ${width}` : width} wide`, receivedVideo, ['alice'],
    (v) => (above ? v?.videoWidth > width : v?.videoWidth === width), { timeout });
}

/** Waits until the server's `layer_state` at `viewer` for alice's camera says `current` is `layer`. */
function aliceLayerAt(viewer, layer) {
  return pollUntil(viewer, `is told (layer_state) it receives spatial layer ${layer} of alice's camera`, receivedVideo, ['alice'],
    (v) => v?.layerState?.current === layer && !v.layerState.waiting_keyframe, { timeout: 5_000 });
}

for (const codec of CODECS) {
  const NAME = codec.toUpperCase();
  const MIME = `video/${codec}`;
  describe(`${NAME} SVC (${MODE}): one publisher, two viewers choosing different spatial layers`, () => {
    const room = `svc-${codec}-${randomBytes(4).toString('hex')}`;
    let alice;
    let bob;
    let carol;
    const everyone = () => [alice, bob, carol].filter(Boolean);

    before(async () => {
      const results = await Promise.allSettled([
        startServer(),
        launchParticipant('alice').then((p) => { alice = p; }),
        launchParticipant('bob').then((p) => { bob = p; }),
        launchParticipant('carol').then((p) => { carol = p; }),
      ]);
      const failed = results.find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
      const base = results[0].value;
      await Promise.all(everyone().map((p) => p.page.addInitScript(recordLayerStates)));
      // The demo asks the camera for 1280x720 (media.js), which the fake camera gives.
      await alice.page.goto(callUrl(base, room, alice.name, { codec, svc: MODE }), { waitUntil: 'load' });
      await Promise.all([bob, carol].map((p) => p.page.goto(callUrl(base, room, p.name, { role: 'viewer' }), { waitUntil: 'load' })));
    }, { timeout: 60_000 });

    after(async () => {
      await mkdir(ARTIFACTS, { recursive: true }).catch(() => {});
      for (const participant of everyone()) {
        await participant.page?.screenshot({ path: path.join(ARTIFACTS, `svc-${codec}-${participant.name}.png`), timeout: 5_000 })
          .catch((err) => console.error(`screenshot of ${participant.name} failed: ${err.message}`));
      }
      await Promise.all(everyone().map(closeParticipant));
      await stopServer();
    }, { timeout: 30_000 });

    it(`bob and carol play alice's camera, decoded as ${NAME}`, { timeout: JOIN_MS + SAMPLE_MS + 15_000 }, async () => {
      await Promise.all([bob, carol].map((p) => waitUntil(p, 'one remote tile (alice) with a playing video', () => {
        const tiles = document.querySelectorAll('[data-testid="tile"]');
        return tiles.length === 1 && tiles[0].querySelector('video').videoWidth > 0;
      }, null, { timeout: JOIN_MS, describe: describeTiles })));
      const samples = await Promise.all([bob, carol].map((p) => sampleRemoteMedia(p, SAMPLE_MS)));
      for (const [participant, [tile]] of [[bob, samples[0]], [carol, samples[1]]]) {
        const detail = `${participant.name}: ${JSON.stringify(tile)}`;
        assert.equal(tile.name, 'alice', detail);
        assert.ok(tile.second.framesDecoded > tile.first.framesDecoded, `alice's video is not advancing over ${SAMPLE_MS} ms; ${detail}`);
        assert.deepEqual(tile.second.videoCodecs, [MIME], `decoded as ${NAME}; ${detail}`);
      }
    });

    it(`alice sends her camera as one ${MODE} encoding, reaching 1280x720`, { timeout: RAMP_MS + 10_000 }, async (t) => {
      // The top spatial layer comes once the bandwidth estimate allows it.
      const sent = await pollUntil(alice, 'sends one camera stream whose top spatial layer is 1280 wide', sentVideo, null,
        (s) => s?.outbound?.length === 1 && s.outbound[0].frameWidth === 1280, { timeout: RAMP_MS, every: 1_000 });
      const detail = JSON.stringify(sent);
      t.diagnostic(`alice sends ${JSON.stringify(sent.outbound[0])}`);
      assert.equal(sent.cameraSvc, MODE, `the demo took the SVC path (no fallback to simulcast); ${detail}`);
      assert.equal(sent.encodings.length, 1, `a single encoding; ${detail}`);
      assert.equal(sent.encodings[0].rid, undefined, `the encoding has no RID; ${detail}`);
      assert.equal(sent.encodings[0].scalabilityMode, MODE, `the sender's parameters keep ${MODE}; ${detail}`);
      const [outbound] = sent.outbound;
      assert.equal(outbound.codec, MIME, `sent as ${NAME}; ${detail}`);
      if (outbound.reportsMode) assert.equal(outbound.scalabilityMode, MODE, `outbound-rtp reports ${MODE}; ${detail}`);
      // The self-view overlay says what is sent.
      await pollUntil(alice, `self-view overlay names ${MODE}`, sentVideo, null, (s) => s?.overlay?.includes(`(${MODE})`), { timeout: 5_000 });
    });

    it('bob on low decodes 320 wide while carol on auto decodes 1280 wide', { timeout: RAMP_MS + 2 * STEP_MS + 10_000 }, async () => {
      // Both start in auto on a tile wider than 640 device pixels: the top layer.
      await Promise.all([bob, carol].map((p) => aliceWidthAt(p, 1280, { timeout: RAMP_MS })));
      await bob.page.evaluate(chooseQuality, ['alice', 'low']);
      await aliceWidthAt(bob, 320);
      const [atBob, atCarol] = await Promise.all([
        aliceLayerAt(bob, 0),
        pollUntil(carol, 'still decodes alice\'s camera 1280 wide, in auto', receivedVideo, ['alice'],
          (v) => v?.videoWidth === 1280 && v.quality === 'auto'),
      ]);
      assert.equal(atBob.videoWidth, 320, `bob still decodes the low layer; ${JSON.stringify(atBob)}`);
      assert.equal(atBob.codec, MIME, `bob still decodes ${NAME}; ${JSON.stringify(atBob)}`);
      assert.equal(atCarol.codec, MIME, `carol still decodes ${NAME}; ${JSON.stringify(atCarol)}`);
      // The overlay names the spatial layer (an SVC track has no RIDs).
      await pollUntil(bob, 'stats overlay says layer low (S0)', receivedVideo, ['alice'],
        (v) => /layer low \(S0\)/.test(v?.overlay ?? ''), { timeout: 5_000 });
    });

    it(`no freeze: bob on low and carol on auto keep decoding for ${STEADY_MS / 1000} s`, { timeout: STEADY_MS + 15_000 }, async (t) => {
      const watch = async (p) => {
        const start = Date.now();
        const samples = [];
        for (let i = 0; i <= STEADY_MS / STEADY_EVERY_MS; i++) {
          await sleep(start + i * STEADY_EVERY_MS - Date.now());
          const v = await withTimeout(p.page.evaluate(receivedVideo, ['alice']), 5_000, `reading ${p.name}'s video`);
          samples.push({ at: Date.now() - start, ...v });
        }
        return samples;
      };
      const [atBob, atCarol] = await Promise.all([watch(bob), watch(carol)]);
      // Bob stays on the layer he asked for. Carol must not be dragged down to bob's layer; her
      // own bandwidth estimate may hold her a layer below the top for a while (the allocator's
      // call, checked at the end of the next step), which is no freeze.
      const widthOk = { bob: (w) => w === 320, carol: (w) => w > 320 };
      for (const [participant, samples, width] of [[bob, atBob, '320'], [carol, atCarol, 'more than 320']]) {
        const first = samples[0];
        const last = samples[samples.length - 1];
        const delta = (key) => last[key] - first[key];
        const brief = samples.map((s) => ({
          at: s.at, w: s.videoWidth, decoded: s.framesDecoded, dropped: s.framesDropped, keys: s.keyFramesDecoded,
          pli: s.pliCount, freezes: s.freezeCount, frozen: s.totalFreezesDuration,
        }));
        const detail = `${participant.name}: ${JSON.stringify(brief)}; last: ${JSON.stringify(last)}`;
        t.diagnostic(`${participant.name} over ${last.at} ms at ${[...new Set(samples.map((s) => s.videoWidth))].join('/')} wide: ` +
          `${delta('framesDecoded')} frames decoded, ${delta('framesDropped')} dropped, ${delta('keyFramesDecoded')} keyframes, ` +
          `${delta('pliCount')} PLIs, ${delta('freezeCount')} freezes (${delta('totalFreezesDuration').toFixed(2)} s); ` +
          `layer_state: ${last.layerHistory?.join(', ')}`);
        assert.ok(samples.every((s) => widthOk[participant.name](s.videoWidth)), `stays ${width} wide; ${detail}`);
        // Every second of the window brings new frames.
        const perSecond = 1_000 / STEADY_EVERY_MS;
        for (let i = 0; i + perSecond < samples.length; i++) {
          assert.ok(samples[i + perSecond].framesDecoded > samples[i].framesDecoded,
            `no frame decoded between ${samples[i].at} and ${samples[i + perSecond].at} ms (a freeze); ${detail}`);
        }
        // The fake camera sends 20 fps (the top layer at least half of it on a busy machine).
        assert.ok(delta('framesDecoded') >= (5 * STEADY_MS) / 1_000, `fewer than 5 frames a second decoded; ${detail}`);
        // A forwarding fault (a broken layer, a missing reference) drops frames by the dozen and
        // shows in the PLIs below; a decoder short of CPU on a loaded two-core machine drops a
        // late one now and then (6 of 60 seen in CI, 0 in the rerun).
        assert.ok(delta('framesDropped') <= Math.max(5, 0.15 * delta('framesDecoded')), `frames dropped by the decoder; ${detail}`);
        // A picture the decoder cannot use (a missing reference, a broken layer) makes it ask
        // for a keyframe: a steady forwarded stream needs none.
        assert.ok(delta('pliCount') <= 1, `the decoder asked for keyframes (decode errors?); ${detail}`);
        assert.ok(delta('totalFreezesDuration') < 0.5, `the video froze; ${detail}`);
      }
    });

    it('bob on high decodes 1280 wide, then on medium 640 wide', { timeout: 4 * STEP_MS + 10_000 }, async () => {
      await bob.page.evaluate(chooseQuality, ['alice', 'high']);
      await aliceWidthAt(bob, 1280);
      await aliceLayerAt(bob, 2);
      await pollUntil(bob, 'stats overlay says layer high (S2)', receivedVideo, ['alice'],
        (v) => /layer high \(S2\)/.test(v?.overlay ?? ''), { timeout: 5_000 });
      await bob.page.evaluate(chooseQuality, ['alice', 'medium']);
      await aliceWidthAt(bob, 640);
      await aliceLayerAt(bob, 1);
      // Carol, in auto on a tile wider than 640 on an unconstrained link, has (or gets back)
      // the top layer whatever bob chose.
      await aliceWidthAt(carol, 1280);
    });

    it('the SVC tile offers the quality menu, though its track has no simulcast RIDs', { timeout: 10_000 }, async () => {
      for (const participant of [bob, carol]) {
        const v = await withTimeout(participant.page.evaluate(receivedVideo, ['alice']), 5_000, `reading ${participant.name}'s tile`);
        assert.deepEqual(v?.simulcast, [], `alice's camera track has no RIDs; ${JSON.stringify(v)}`);
        assert.equal(v?.menuHidden, false, `${participant.name}'s quality menu shows; ${JSON.stringify(v)}`);
      }
    });

    it('no console errors in any page', () => {
      assert.deepEqual(everyone().flatMap((p) => p.errors), []);
    });
  });
}

// L1T3: one spatial layer with three temporal layers (the scalable path with a single layer:
// VP9 read from its payload descriptor, H264 from the Dependency Descriptor Chromium attaches).
// The viewer decodes the full picture without freezing, is told the track has one layer, and
// gets every temporal layer once its estimate carries them.
for (const codec of ['vp9', 'h264'].filter((c) => c !== 'vp9' || CODECS.includes('vp9'))) describe(`${codec.toUpperCase()} SVC (L1T3): one spatial layer, three temporal layers`, () => {
  const room = `svc-l1t3-${codec}-${randomBytes(4).toString('hex')}`;
  const started = {};
  let alice;
  let bob;
  const everyone = () => Object.values(started);

  before(async () => {
    const base = await startServerAndParticipants(['alice', 'bob'], started);
    ({ alice, bob } = started);
    await Promise.all(everyone().map((p) => p.page.addInitScript(recordLayerStates)));
    await alice.page.goto(callUrl(base, room, alice.name, { codec, svc: 'L1T3' }), { waitUntil: 'load' });
    await bob.page.goto(callUrl(base, room, bob.name, { role: 'viewer' }), { waitUntil: 'load' });
  }, { timeout: 60_000 });

  after(async () => {
    await Promise.all(everyone().map(closeParticipant));
    await stopServer();
  }, { timeout: 30_000 });

  it('alice sends one L1T3 encoding; bob decodes it 1280 wide as one layer, without freezing', { timeout: RAMP_MS + STEADY_MS + 20_000 }, async (t) => {
    const sent = await pollUntil(alice, `sends one ${codec} camera stream 1280 wide`, sentVideo, null,
      (s) => s?.outbound?.length === 1 && s.outbound[0].frameWidth === 1280 && s.outbound[0].codec === `video/${codec}`,
      { timeout: RAMP_MS, every: 1_000 });
    assert.equal(sent.encodings[0].scalabilityMode, 'L1T3', JSON.stringify(sent));
    if (sent.outbound[0].reportsMode) assert.equal(sent.outbound[0].scalabilityMode, 'L1T3', JSON.stringify(sent));
    await aliceWidthAt(bob, 1280, { timeout: RAMP_MS });
    // A single layer above the new viewer's first estimate starts thinned to fewer temporal
    // layers (`max_temporal`) and gets them all once the estimate grows.
    const first = await pollUntil(bob, 'gets every temporal layer', receivedVideo, ['alice'],
      (v) => v?.layerState && v.layerState.max_temporal == null, { timeout: RAMP_MS });
    await sleep(STEADY_MS);
    const last = await withTimeout(bob.page.evaluate(receivedVideo, ['alice']), 5_000, 'reading bob\'s tile');
    const detail = `${JSON.stringify(first)} -> ${JSON.stringify(last)}`;
    t.diagnostic(`bob: ${last.framesDecoded - first.framesDecoded} frames in ${STEADY_MS} ms, ${last.framesPerSecond} fps; layer_state ${JSON.stringify(last.layerState)}`);
    assert.equal(last.codec, `video/${codec}`, detail);
    assert.equal(last.videoWidth, 1280, detail);
    assert.equal(last.layerState?.layers, 1, `one layer (no spatial layers to choose); ${detail}`);
    t.diagnostic(`bob's layer states: ${last.layerHistory?.join(', ')}`);
    // The fake camera sends 20 fps; a viewer whose estimate dips below the one layer gets a
    // half or a quarter of them (temporal layers dropped), still a moving picture.
    assert.ok(last.framesDecoded - first.framesDecoded >= 5 * (STEADY_MS / 1_000), `at least 5 fps; ${detail}`);
    assert.ok(last.totalFreezesDuration - first.totalFreezesDuration < 0.5, `no freeze; ${detail}`);
    assert.ok(last.pliCount - first.pliCount <= 1, `no decode errors; ${detail}`);
  });

  it('no console errors in any page', () => {
    assert.deepEqual(everyone().flatMap((p) => p.errors), []);
  });
});
