// Two headless Chromium participants in one room, with VP8, with H264 and with VP9 (`?codec=`,
// each in three simulcast layers), and with VP8 and a microphone offered in G.711 alone
// (`?audio=pcmu`, `?audio=pcma`, as a phone would): each must see and hear the other (decoded
// with the codecs asked for, audio energy growing), move the other's tile between simulcast
// layers with its quality menu, and chat.
//
//   cd web-demo/tests && npm install && npm test
//
// Environment: see harness.mjs. Every wait is bounded; a watchdog ends the run after 300 s.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import {
  ARTIFACTS, startServer, stopServer, startWatchdog, launchParticipant, closeParticipant, callUrl,
  waitUntil, describeTiles, sampleRemoteMedia,
} from './harness.mjs';

const TOTAL_BUDGET_MS = 420_000;
const MEDIA_MS = 15_000;
const SAMPLE_MS = 2_000;
const CHAT_MS = 10_000;

const stopWatchdog = startWatchdog(TOTAL_BUDGET_MS);
after(() => stopWatchdog());

const CASES = [
  { codec: 'vp8', audio: 'opus', layers: true },
  { codec: 'h264', audio: 'opus', layers: true },
  { codec: 'vp9', audio: 'opus', layers: true },
  { codec: 'vp8', audio: 'pcmu', layers: false },
  { codec: 'vp8', audio: 'pcma', layers: false },
];
/** A switch to another simulcast layer (a keyframe of it asked for and forwarded). */
const LAYER_MS = 20_000;

for (const { codec, audio, layers } of CASES) describe(`two participants in one room (${codec}, ${audio})`, () => {
  const room = `e2e-${codec}-${audio}-${randomBytes(4).toString('hex')}`;
  let alice;
  let bob;

  before(async () => {
    // Start everything at once; keep whatever did start, so `after` can clean it up.
    const results = await Promise.allSettled([
      startServer(),
      launchParticipant('alice').then((p) => { alice = p; }),
      launchParticipant('bob').then((p) => { bob = p; }),
    ]);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    const base = results[0].value;
    await Promise.all([alice, bob].map((p) => p.page.goto(callUrl(base, room, p.name, { codec, audio }), { waitUntil: 'load' })));
  }, { timeout: 50_000 });

  after(async () => {
    await mkdir(ARTIFACTS, { recursive: true }).catch(() => {});
    for (const participant of [alice, bob]) {
      if (!participant?.page) continue;
      await participant.page.screenshot({ path: path.join(ARTIFACTS, `${participant.name}-${codec}-${audio}.png`), timeout: 5_000 })
        .catch((err) => console.error(`screenshot of ${participant.name} failed: ${err.message}`));
    }
    await Promise.all([closeParticipant(alice), closeParticipant(bob)]);
    await stopServer();
  }, { timeout: 25_000 });

  it('each participant sees one remote video that is playing, and receives audio', { timeout: MEDIA_MS + SAMPLE_MS + 10_000 }, async () => {
    await Promise.all([alice, bob].map((p) => waitUntil(p, 'one remote tile with a playing video', () => {
      const tiles = document.querySelectorAll('[data-testid="tile"]');
      return tiles.length === 1 && tiles[0].querySelector('video').videoWidth > 0;
    }, null, { timeout: MEDIA_MS, describe: describeTiles })));

    for (const participant of [alice, bob]) {
      const [tile] = await sampleRemoteMedia(participant, SAMPLE_MS);
      const detail = `${participant.name}: ${JSON.stringify(tile)}`;
      assert.ok(tile.second.videoWidth > 0, `remote video has no size; ${detail}`);
      assert.ok(tile.second.framesDecoded > tile.first.framesDecoded, `remote video is not advancing over ${SAMPLE_MS} ms; ${detail}`);
      assert.ok(tile.second.audioPackets > tile.first.audioPackets, `no inbound audio packets over ${SAMPLE_MS} ms; ${detail}`);
      // The fake microphone beeps: energy grows only if the audio decodes (is heard).
      assert.ok(tile.second.audioEnergy > tile.first.audioEnergy, `the remote audio is not heard over ${SAMPLE_MS} ms; ${detail}`);
      assert.deepEqual(tile.second.videoCodecs, [`video/${codec}`], `decoded with the codec asked for; ${detail}`);
      assert.deepEqual(tile.second.audioCodecs, [`audio/${audio}`], `audio received in the codec offered; ${detail}`);
    }
  });

  it('the quality menu of a tile moves it between simulcast layers', { skip: !layers, timeout: 3 * LAYER_MS + 5_000 }, async () => {
    // Alice picks the quality of bob's tile; the server switches her to that layer of his
    // camera at its next keyframe (the same allocator and switch for every codec).
    const choose = (quality) => alice.page.evaluate(([q]) => {
      const select = document.querySelector('[data-testid="tile"] select.quality');
      select.value = q;
      select.dispatchEvent(new Event('change'));
    }, [quality]);
    const widthIs = (width, above, what) => waitUntil(alice, `bob's tile ${what}`, ([w, more]) => {
      const actual = document.querySelector('[data-testid="tile"] video')?.videoWidth ?? 0;
      return more ? actual > w : actual === w;
    }, [width, above], { timeout: LAYER_MS, describe: describeTiles });
    await choose('low');
    await widthIs(320, false, 'decodes the low layer (320 wide)');
    await choose('high');
    await widthIs(1280, false, 'decodes the high layer (1280 wide)');
    await choose('auto');
    await widthIs(320, true, 'stays above the low layer in auto');
    const [tile] = await sampleRemoteMedia(alice, SAMPLE_MS);
    assert.ok(tile.second.framesDecoded > tile.first.framesDecoded, `bob's video plays after the switches: ${JSON.stringify(tile)}`);
    assert.deepEqual(tile.second.videoCodecs, [`video/${codec}`], `still ${codec}: ${JSON.stringify(tile)}`);
  });

  it('a chat message typed by one participant appears at the other', { timeout: 2 * CHAT_MS + 5_000 }, async () => {
    for (const [from, to] of [[alice, bob], [bob, alice]]) {
      const text = `hello from ${from.name} ${randomBytes(3).toString('hex')}`;
      await from.page.fill('#chat-input', text, { timeout: CHAT_MS }); // waits for the channel to open
      await from.page.press('#chat-input', 'Enter', { timeout: CHAT_MS });
      await waitUntil(to, `receives "${text}" from ${from.name}`, ([sender, body]) => [...document.querySelectorAll('#chat-log li')]
        .some((li) => li.querySelector('.chat-from')?.textContent === sender &&
          li.querySelector('.chat-text')?.textContent === body), [from.name, text], { timeout: CHAT_MS });
    }
  });

  it('no console errors in either page', () => {
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  });
});
