// A call that survives its signalling socket dropping: two headless Chromium participants; one
// page's socket closes under it. The demo opens a new socket and resumes the same session (same
// participant, no leave seen by the other, media never stops), restarts ICE on both peer
// connections, and keeps working. A resume the server refuses falls back to joining again.
//
//   cd web-demo/tests && npm install && node --test resume.test.mjs
//
// Environment: see harness.mjs. Every wait is bounded; a watchdog ends the run after 90 s.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  startServer, stopServer, startWatchdog, launchParticipant, closeParticipant, callUrl,
  waitUntil, describeTiles, sampleRemoteMedia,
} from './harness.mjs';

const TOTAL_BUDGET_MS = 90_000;
const MEDIA_MS = 15_000;
const SAMPLE_MS = 2_000;
const RESUME_MS = 15_000;

const stopWatchdog = startWatchdog(TOTAL_BUDGET_MS);
after(() => stopWatchdog());

/** In-page: what the test compares before and after the drop. */
function snapshot() {
  const { state } = window.sfuDemo;
  const ufrag = (sdp) => /a=ice-ufrag:(\S+)/.exec(sdp ?? '')?.[1] ?? null;
  return {
    phase: state.phase,
    participantId: state.participantId,
    resumes: state.resumes,
    iceRestarts: state.iceRestarts,
    counts: { ...state.messageCounts },
    publishUfrag: ufrag(state.pubPc?.localDescription?.sdp),
    subscribeUfrag: ufrag(state.subPc?.remoteDescription?.sdp),
    publishState: state.pubPc?.connectionState,
    subscribeState: state.subPc?.connectionState,
  };
}

async function assertMediaFlows(participant) {
  const [tile] = await sampleRemoteMedia(participant, SAMPLE_MS);
  const detail = `${participant.name}: ${JSON.stringify(tile)}`;
  assert.ok(tile, `${participant.name} has a remote tile`);
  assert.ok(tile.second.framesDecoded > tile.first.framesDecoded, `remote video advances; ${detail}`);
  assert.ok(tile.second.audioPackets > tile.first.audioPackets, `remote audio arrives; ${detail}`);
}

describe('a dropped signalling socket', () => {
  const room = `resume-${randomBytes(4).toString('hex')}`;
  let alice;
  let bob;

  before(async () => {
    const results = await Promise.allSettled([
      startServer(),
      launchParticipant('alice').then((p) => { alice = p; }),
      launchParticipant('bob').then((p) => { bob = p; }),
    ]);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    const base = results[0].value;
    await Promise.all([alice, bob].map((p) => p.page.goto(callUrl(base, room, p.name), { waitUntil: 'load' })));
    await Promise.all([alice, bob].map((p) => waitUntil(p, 'one remote tile with a playing video', () => {
      const tiles = document.querySelectorAll('[data-testid="tile"]');
      return tiles.length === 1 && tiles[0].querySelector('video').videoWidth > 0;
    }, null, { timeout: MEDIA_MS, describe: describeTiles })));
  }, { timeout: 50_000 });

  after(async () => {
    await Promise.all([closeParticipant(alice), closeParticipant(bob)]);
    await stopServer();
  }, { timeout: 25_000 });

  it('is resumed on a new socket: same participant, nobody sees a leave, ICE restarts, media flows', { timeout: RESUME_MS + 4 * SAMPLE_MS + 20_000 }, async () => {
    const before = await alice.page.evaluate(snapshot);
    const bobBefore = await bob.page.evaluate(snapshot);
    assert.equal(before.phase, 'joined');
    assert.ok(before.publishUfrag && before.subscribeUfrag, JSON.stringify(before));

    await alice.page.evaluate(() => window.sfuDemo.state.signalling.ws.close(4001, 'dropped by the test'));
    await waitUntil(alice, 'resumes the session and reconnects both connections after an ICE restart', (was) => {
      const { state } = window.sfuDemo;
      const ufrag = (sdp) => /a=ice-ufrag:(\S+)/.exec(sdp ?? '')?.[1] ?? null;
      return state.phase === 'joined' && state.resumes === 1 && state.iceRestarts >= 1 &&
        ufrag(state.pubPc?.localDescription?.sdp) !== was.publishUfrag &&
        ufrag(state.subPc?.remoteDescription?.sdp) !== was.subscribeUfrag &&
        state.pubPc?.connectionState === 'connected' && state.subPc?.connectionState === 'connected';
    }, before, { timeout: RESUME_MS, describe: snapshot });

    const after = await alice.page.evaluate(snapshot);
    assert.equal(after.participantId, before.participantId, 'the same participant');
    assert.equal(after.counts.joined, 1, 'joined once: no rejoin');
    assert.equal(after.counts.resumed, 1);
    await Promise.all([assertMediaFlows(alice), assertMediaFlows(bob)]);

    // Messages flow on the new socket: bob mutes, alice sees it.
    await bob.page.click('#mic-button');
    await waitUntil(alice, "shows bob's microphone muted", () => {
      const badge = document.querySelector('[data-testid="tile"] .badge.mic-off');
      return badge && !badge.hidden;
    }, null, { timeout: 10_000, describe: describeTiles });

    const bobAfter = await bob.page.evaluate(snapshot);
    assert.equal(bobAfter.counts.participant_left ?? 0, 0, `bob never saw alice leave: ${JSON.stringify(bobAfter.counts)}`);
    assert.equal(bobAfter.counts.participant_joined ?? 0, bobBefore.counts.participant_joined ?? 0, 'nor join again');
    assert.equal(bobAfter.counts.track_unpublished ?? 0, 0);
  });

  it('that cannot be resumed is joined again', { timeout: MEDIA_MS + RESUME_MS + 10_000 }, async () => {
    const before = await alice.page.evaluate(snapshot);
    await alice.page.evaluate(() => {
      const { state } = window.sfuDemo;
      state.resumeToken = 'a-token-the-server-does-not-know';
      state.signalling.ws.close(4001, 'dropped by the test');
    });
    await waitUntil(alice, 'joins again with a new participant id, and sees bob again', (was) => {
      const { state } = window.sfuDemo;
      const tiles = document.querySelectorAll('[data-testid="tile"]');
      return state.phase === 'joined' && state.participantId !== was.participantId &&
        (state.messageCounts.joined ?? 0) === 2 &&
        tiles.length === 1 && tiles[0].querySelector('video').videoWidth > 0;
    }, before, { timeout: MEDIA_MS + RESUME_MS, describe: snapshot });
    await assertMediaFlows(alice);
  });

  it('no console errors in either page', () => {
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  });
});
