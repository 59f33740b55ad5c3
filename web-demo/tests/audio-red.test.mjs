// Opus with RED (RFC 2198 redundant audio) through the SFU started with `--red-audio`: alice's
// Chromium sends her microphone as RED, which the server's answer lists first. Bob, a Chromium viewer, negotiates
// RED too and gets alice's packets as they came; carol's page takes RED out of the codecs it
// answers with (`setCodecPreferences`, as an endpoint without RED would), and the server sends
// her each packet's primary block as plain Opus. Both must hear alice: audio packets arriving,
// audio energy growing (the fake microphone beeps), little concealment.
//
//   cd web-demo/tests && npm install && node --test audio-red.test.mjs
//
// Environment: see harness.mjs. Every wait is bounded; a watchdog ends the run after 120 s.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  stopServer, startWatchdog, closeParticipant, callUrl, waitUntil, describeTiles, sleep, withTimeout,
  startServerAndParticipants, pollUntil,
} from './harness.mjs';

const TOTAL_BUDGET_MS = 120_000;
const JOIN_MS = 20_000;
const SAMPLE_MS = 3_000;

const stopWatchdog = startWatchdog(TOTAL_BUDGET_MS);
after(() => stopWatchdog());

/** Init script: keeps the page's peer connections in `window.peerConnections`. */
function keepPeerConnections() {
  const Native = window.RTCPeerConnection;
  window.peerConnections = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      window.peerConnections.push(this);
    }
  };
}

/** Init script (carol): answers every audio m-line without RED. */
function answerWithoutRed() {
  const createAnswer = RTCPeerConnection.prototype.createAnswer;
  RTCPeerConnection.prototype.createAnswer = function (...args) {
    const { codecs } = RTCRtpReceiver.getCapabilities('audio');
    const withoutRed = codecs.filter((c) => c.mimeType.toLowerCase() !== 'audio/red');
    for (const t of this.getTransceivers()) {
      if (t.receiver.track.kind === 'audio' && !t.stopped) t.setCodecPreferences(withoutRed);
    }
    return createAnswer.apply(this, args);
  };
}

/** In the page: the audio this page receives (or sends), and whether its SDP has RED. */
async function audioStats() {
  const out = { inbound: [], outbound: [], localRed: false };
  // For a report when a viewer hears nothing: how the page plays what it receives.
  out.elements = [...document.querySelectorAll('audio')].map((a) => ({
    paused: a.paused, muted: a.muted, volume: a.volume, readyState: a.readyState,
    tracks: a.srcObject?.getTracks().map((t) => `${t.kind}:${t.readyState}:${t.enabled ? 'on' : 'off'}:${t.muted ? 'muted' : 'live'}`),
  }));
  for (const pc of window.peerConnections) {
    const sdp = pc.localDescription?.sdp ?? '';
    const audio = sdp.split('m=').filter((m) => m.startsWith('audio'));
    if (audio.some((m) => /a=rtpmap:\d+ red\/48000/i.test(m))) out.localRed = true;
    const report = await pc.getStats();
    for (const s of report.values()) {
      if (s.kind !== 'audio') continue;
      const codec = report.get(s.codecId)?.mimeType?.toLowerCase();
      if (s.type === 'inbound-rtp') {
        out.inbound.push({
          codec, packets: s.packetsReceived, lost: s.packetsLost, energy: s.totalAudioEnergy,
          samples: s.totalSamplesReceived, concealed: s.concealedSamples,
          // For a report when a viewer hears nothing.
          pt: report.get(s.codecId)?.payloadType, fmtp: report.get(s.codecId)?.sdpFmtpLine,
          ssrc: s.ssrc, level: s.audioLevel, bytes: s.bytesReceived, jitterBuffer: s.jitterBufferDelay,
          emitted: s.jitterBufferEmittedCount, silentConcealed: s.silentConcealedSamples,
          muted: pc.getReceivers().find((r) => r.track.kind === 'audio')?.track.muted,
        });
      } else if (s.type === 'outbound-rtp') {
        out.outbound.push({ codec, packets: s.packetsSent });
      }
    }
  }
  return out;
}

async function metric(base, name) {
  const text = await withTimeout(fetch(new URL('/metrics', base)).then((r) => r.text()), 5_000, 'reading /metrics');
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}

describe('Opus with RED: a viewer with RED and one without both hear the publisher', () => {
  const room = `red-${randomBytes(4).toString('hex')}`;
  const started = {};
  let base;
  let alice;
  let bob;
  let carol;
  const everyone = () => Object.values(started);

  before(async () => {
    base = await startServerAndParticipants(['alice', 'bob', 'carol'], started, ['--red-audio']);
    ({ alice, bob, carol } = started);
    await Promise.all(everyone().map((p) => p.page.addInitScript(keepPeerConnections)));
    await carol.page.addInitScript(answerWithoutRed);
    await alice.page.goto(callUrl(base, room, alice.name), { waitUntil: 'load' });
    await Promise.all([bob, carol].map((p) => p.page.goto(callUrl(base, room, p.name, { role: 'viewer' }), { waitUntil: 'load' })));
  }, { timeout: 60_000 });

  after(async () => {
    await Promise.all(everyone().map(closeParticipant));
    await stopServer();
  }, { timeout: 30_000 });

  it('bob negotiated RED and carol did not', { timeout: JOIN_MS + 5_000 }, async () => {
    await Promise.all([bob, carol].map((p) => waitUntil(p, 'alice\'s tile', () =>
      document.querySelectorAll('[data-testid="tile"]').length === 1, null, { timeout: JOIN_MS, describe: describeTiles })));
    // The tile comes with the room's news; the audio m-line with the next subscribe offer.
    const [atBob, atCarol] = await Promise.all([bob, carol].map((p) => pollUntil(p, 'receives alice\'s audio', audioStats, null,
      (s) => s?.inbound?.length === 1 && s.inbound[0].packets > 0, { timeout: JOIN_MS })));
    assert.equal(atBob.localRed, true, `bob's answer keeps RED: ${JSON.stringify(atBob)}`);
    assert.equal(atCarol.localRed, false, `carol's answer has no RED: ${JSON.stringify(atCarol)}`);
  });

  it('both hear alice: packets, audio energy, little concealment; the server strips RED for carol only', { timeout: JOIN_MS + 2 * SAMPLE_MS + 15_000 }, async (t) => {
    const hearing = (s) => s.inbound.length === 1 && s.inbound[0].packets > 50 && s.inbound[0].energy > 0;
    await Promise.all([bob, carol].map(async (p) => {
      const start = Date.now();
      for (;;) {
        const s = await withTimeout(p.page.evaluate(audioStats), 5_000, `reading ${p.name}'s audio`);
        if (hearing(s)) return;
        if (Date.now() - start > JOIN_MS) assert.fail(`${p.name} does not hear alice: ${JSON.stringify(s)}`);
        await sleep(500);
      }
    }));
    const first = await Promise.all([bob, carol].map((p) => p.page.evaluate(audioStats)));
    const [red0, stripped0] = [await metric(base, 'sfu_rtp_red_received_total'), await metric(base, 'sfu_rtp_red_stripped_total')];
    await sleep(SAMPLE_MS);
    const second = await Promise.all([bob, carol].map((p) => p.page.evaluate(audioStats)));
    const [red1, stripped1] = [await metric(base, 'sfu_rtp_red_received_total'), await metric(base, 'sfu_rtp_red_stripped_total')];
    const sent = await alice.page.evaluate(audioStats);
    t.diagnostic(`alice sends ${JSON.stringify(sent.outbound)}; RED packets received by the server +${red1 - red0}, stripped +${stripped1 - stripped0}`);
    for (const [i, p] of [[0, bob], [1, carol]]) {
      const [a] = first[i].inbound;
      const [b] = second[i].inbound;
      const detail = `${p.name}: ${JSON.stringify(a)} -> ${JSON.stringify(b)}`;
      t.diagnostic(detail);
      assert.equal(b.codec, 'audio/opus', `decoded as Opus; ${detail}`);
      // 50 packets a second; a loaded machine may deliver late, not lose.
      assert.ok(b.packets - a.packets >= 25 * (SAMPLE_MS / 1_000), `audio keeps arriving; ${detail}`);
      assert.ok(b.energy > a.energy, `audio energy grows (alice is heard); ${detail}`);
      const concealed = (b.concealed - a.concealed) / Math.max(1, b.samples - a.samples);
      assert.ok(concealed < 0.2, `little concealment (${(100 * concealed).toFixed(1)}%); ${detail}`);
    }
    // The server received RED from alice and stripped it for carol alone: bob's packets went on
    // as they came (one stripped packet per packet carol got).
    assert.ok(red1 - red0 >= 25 * (SAMPLE_MS / 1_000), `alice sends RED (${red1 - red0} RED packets in ${SAMPLE_MS} ms)`);
    const carolGot = second[1].inbound[0].packets - first[1].inbound[0].packets;
    assert.ok(stripped1 - stripped0 > 0 && stripped1 - stripped0 <= (red1 - red0) + 10,
      `RED stripped for carol only (stripped +${stripped1 - stripped0}, RED received +${red1 - red0}, carol got +${carolGot})`);
  });

  it('no console errors in any page', () => {
    assert.deepEqual(everyone().flatMap((p) => p.errors), []);
  });
});
