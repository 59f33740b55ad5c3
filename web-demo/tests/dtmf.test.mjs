// DTMF through the SFU: alice's Chromium sends digits with `RTCDTMFSender.insertDTMF` on her
// microphone (Opus, then G.711 with `?audio=pcmu`); a bot viewer (`sfu-listen`, str0m) that
// negotiated RFC 4733 telephone events receives them with the right digits, in order, each
// ended and about as long as it was sent, beside the microphone's audio.
//
//   cd web-demo/tests && npm install && node --test dtmf.test.mjs
//
// Needs `target/debug/sfu-listen` (or SFU_LISTEN_BIN): `cargo build -p loadtest`.
// Environment: see harness.mjs. Every wait is bounded; a watchdog ends the run after 150 s.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  startServer, stopServer, startWatchdog, launchParticipant, closeParticipant, callUrl, waitUntil,
} from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const LISTEN_BIN = process.env.SFU_LISTEN_BIN
  ? path.resolve(process.env.SFU_LISTEN_BIN)
  : path.resolve(HERE, '../../target/debug/sfu-listen');
const TOTAL_BUDGET_MS = 150_000;
const JOIN_MS = 20_000;
const LISTEN_S = 40;
const DIGITS = '19#*';
/** Tone length and gap asked of insertDTMF, in ms. */
const TONE_MS = 120;
const GAP_MS = 80;

const stopWatchdog = startWatchdog(TOTAL_BUDGET_MS);
after(() => stopWatchdog());

/** Starts `sfu-listen` in `room`; resolves once it is in the room, with the promise of its report. */
function startListener(base, room) {
  const url = new URL(base);
  const child = spawn(LISTEN_BIN, ['--url', url.host, '--room', room, '--seconds', String(LISTEN_S),
    '--tones', String(DIGITS.length), '--announce'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  const report = new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`sfu-listen exited ${code}: ${err}`))));
  });
  const joined = new Promise((resolve, reject) => {
    child.stderr.on('data', (d) => {
      err += d;
      if (err.includes('joined')) resolve();
    });
    report.catch(reject);
  });
  return { child, joined, report };
}

for (const audio of ['opus', 'pcmu']) describe(`DTMF from Chromium (${audio}) reaches a bot viewer`, () => {
  const room = `dtmf-${audio}-${randomBytes(4).toString('hex')}`;
  let base;
  let alice;
  let listener;

  before(async () => {
    const results = await Promise.allSettled([
      startServer(),
      launchParticipant('alice').then((p) => { alice = p; }),
    ]);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    base = results[0].value;
  }, { timeout: 60_000 });

  after(async () => {
    if (listener?.child.exitCode === null) listener.child.kill();
    await closeParticipant(alice);
    await stopServer();
  }, { timeout: 30_000 });

  it(`the bot hears ${DIGITS} in order, each tone ended and about ${TONE_MS} ms long`, { timeout: JOIN_MS * 2 + LISTEN_S * 1_000 }, async (t) => {
    await alice.page.goto(callUrl(base, room, alice.name, audio === 'opus' ? {} : { audio }), { waitUntil: 'load' });
    await waitUntil(alice, 'the microphone can send DTMF', () => {
      const sender = window.sfuDemo.state.tx.mic?.sender;
      return sender?.dtmf?.canInsertDTMF === true && window.sfuDemo.state.pubPc?.connectionState === 'connected';
    }, null, { timeout: JOIN_MS });
    listener = startListener(base, room);
    await listener.joined;
    // The bot's subscription to alice's microphone is negotiated after it joins: let the
    // first audio reach it before the digits go.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    await alice.page.evaluate(([digits, tone, gap]) => {
      window.sfuDemo.state.tx.mic.sender.dtmf.insertDTMF(digits, tone, gap);
    }, [DIGITS, TONE_MS, GAP_MS]);
    const report = await listener.report;
    t.diagnostic(`sfu-listen: ${JSON.stringify(report)}`);
    const heard = report.tones.filter((tone) => tone.ended);
    assert.equal(heard.map((tone) => tone.digit).join(''), DIGITS, `the digits, in order: ${JSON.stringify(report.tones)}`);
    // Chromium sends its events at 8 kHz beside G.711 and (as measured) beside Opus too,
    // though 48 kHz was negotiated: the server forwards them at the rate they came.
    const rates = audio === 'opus' ? [8_000, 48_000] : [8_000];
    for (const tone of heard) {
      assert.ok(rates.includes(tone.clock_rate), `events at a clock rate negotiated for them: ${JSON.stringify(tone)}`);
      // libwebrtc rounds a tone to its packet time (up to one 20 ms frame either way, more on a
      // loaded machine): about as long as asked, never a fraction of it.
      assert.ok(tone.duration_ms >= TONE_MS - 40 && tone.duration_ms <= TONE_MS + 100, `the tone lasts about ${TONE_MS} ms: ${JSON.stringify(tone)}`);
    }
    assert.ok(report.streams.some((s) => !s.video && s.packets > 50), `the bot receives alice's audio too: ${JSON.stringify(report.streams)}`);
  });

  it('no console errors', () => {
    assert.deepEqual(alice.errors, []);
  });
});
