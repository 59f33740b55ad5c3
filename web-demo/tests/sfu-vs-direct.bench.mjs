#!/usr/bin/env node
// The SFU against a direct call: the same Chromium publisher (1280x720 fake camera) and viewer,
// each in its own network namespace, once through the server (the demo, VP8 simulcast, three
// layers) and once connected directly (one VP8 stream, Chromium's own adaptation), through the
// same episode:
//
//   join -> 10 s on the open link -> downlink held to --limit-kbit for --cap-s seconds ->
//   lifted (recovery watched for up to 30 s) -> --loss % random loss on the downlink for
//   --loss-s seconds.
//
// Measured from the viewer's inbound-rtp statistics, sampled every 100 ms in the page: first
// decoded frame after the join, time to 1280 wide, frames per second on the open link, time
// from the limit to a narrower decoded frame, freezes under the limit (count, total, longest:
// Chromium's own freeze definition), time from the lift back to 1280 wide, frames per second
// under loss against the open link's. A benchmark, not a test: it asserts nothing, prints a
// table (and artifacts/sfu-vs-direct.json) for BENCHMARKS.md. Needs root (namespaces).
//
//   cd web-demo/tests && node sfu-vs-direct.bench.mjs --runs 3
//
// Flags: --runs N (3), --modes sfu,direct, --limit-kbit 400, --cap-s 30, --loss 5, --loss-s 20.

import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';
import {
  ARTIFACTS, CHROMIUM_BIN, startServer, stopServer, launchParticipant, closeParticipant, callUrl, sleep,
} from './harness.mjs';
import * as netns from './netns.mjs';

const { values: flags } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    modes: { type: 'string', default: 'sfu,direct' },
    'limit-kbit': { type: 'string', default: '400' },
    'cap-s': { type: 'string', default: '30' },
    loss: { type: 'string', default: '5' },
    'loss-s': { type: 'string', default: '20' },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  console.log('usage: node sfu-vs-direct.bench.mjs [--runs 3] [--modes sfu,direct] [--limit-kbit 400] [--cap-s 30] [--loss 5] [--loss-s 20]');
  process.exit(0);
}
const RUNS = Number(flags.runs);
const MODES = flags.modes.split(',');
const LIMIT_KBIT = Number(flags['limit-kbit']);
const CAP_MS = 1000 * Number(flags['cap-s']);
const LOSS_PERCENT = Number(flags.loss);
const LOSS_MS = 1000 * Number(flags['loss-s']);
const OPEN_MS = 10_000;
const TOP_MS = 20_000;
const RECOVER_MS = 30_000;

const why = netns.unsupportedReason();
if (why) {
  console.error(`cannot run: ${why}`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// In the viewer's page: a sampler of the (only) remote video's inbound-rtp statistics.
// ---------------------------------------------------------------------------------------------

/** Installed before any page script: records when a video first has a decoded size. */
function watchFirstFrame() {
  window.__bench = { firstFrameAt: null, samples: [], sampling: false };
  const timer = setInterval(() => {
    const video = [...document.querySelectorAll('video')].find((v) => v.videoWidth > 0 && v.srcObject?.getVideoTracks().length);
    if (video) {
      window.__bench.firstFrameAt = Date.now();
      window.__bench.video = video;
      clearInterval(timer);
    }
  }, 5);
}

/** Samples the playing video's receiver every 100 ms from now on. */
function startSampling(pcName) {
  const bench = window.__bench;
  if (bench.sampling) return;
  bench.sampling = true;
  const pcs = () => (pcName === 'sfu' ? [window.sfuDemo.state.subPc] : [window.__pc]).filter(Boolean);
  (async () => {
    for (;;) {
      const track = bench.video?.srcObject?.getVideoTracks()[0];
      const receiver = pcs().flatMap((pc) => pc.getReceivers()).find((r) => r.track === track);
      if (receiver) {
        const stats = await receiver.getStats();
        stats.forEach((r) => {
          if (r.type !== 'inbound-rtp' || r.kind !== 'video') return;
          bench.samples.push({
            t: Date.now(), width: r.frameWidth ?? 0, frames: r.framesDecoded ?? 0,
            freezes: r.freezeCount ?? 0, freezeSeconds: r.totalFreezesDuration ?? 0,
          });
        });
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
}

// ---------------------------------------------------------------------------------------------
// A direct call, signalled by this script: the publisher's page offers, the viewer's answers.
// ---------------------------------------------------------------------------------------------

/** Installed in both pages: a connection's local description once its candidates are gathered. */
function installGathered() {
  window.__gathered = async (pc) => {
    if (pc.iceGatheringState !== 'complete') {
      await new Promise((resolve) => pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') resolve();
      }));
    }
    return { type: pc.localDescription.type, sdp: pc.localDescription.sdp };
  };
}

function directOffer() {
  return (async () => {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 1280, height: 720, frameRate: 30 } });
    const pc = new RTCPeerConnection();
    window.__pc = pc;
    for (const track of stream.getTracks()) pc.addTrack(track, stream);
    const vp8 = RTCRtpSender.getCapabilities('video').codecs.filter((c) => /vp8|rtx/i.test(c.mimeType));
    pc.getTransceivers().find((t) => t.sender.track?.kind === 'video').setCodecPreferences(vp8);
    await pc.setLocalDescription();
    return window.__gathered(pc);
  })();
}

function directAnswer(offer) {
  return (async () => {
    const pc = new RTCPeerConnection();
    window.__pc = pc;
    const video = document.createElement('video');
    video.autoplay = true;
    video.muted = true;
    document.body.append(video);
    pc.ontrack = (e) => {
      if (e.track.kind === 'video') video.srcObject = new MediaStream([e.track]);
    };
    await pc.setRemoteDescription(offer);
    await pc.setLocalDescription();
    return window.__gathered(pc);
  })();
}

// ---------------------------------------------------------------------------------------------

/** Per-interface IPv4 forwarding on the host side of `ns` (the direct call crosses the host). */
function forwardThrough(ns) {
  execFileSync('sysctl', ['-q', '-w', `net.ipv4.conf.${ns.hostIf}.forwarding=1`]);
}

async function samples(viewer) {
  return viewer.page.evaluate(() => window.__bench.samples.splice(0));
}

/** Freezes between two samples, and the longest (from the freeze count's single steps). */
function freezesBetween(list) {
  let longest = 0;
  for (let i = 1; i < list.length; i++) {
    const d = list[i].freezeSeconds - list[i - 1].freezeSeconds;
    if (list[i].freezes > list[i - 1].freezes) longest = Math.max(longest, d);
  }
  const a = list[0];
  const b = list[list.length - 1];
  return {
    fps: +((b.frames - a.frames) / ((b.t - a.t) / 1000)).toFixed(1),
    freezes: b.freezes - a.freezes,
    freezeSeconds: +(b.freezeSeconds - a.freezeSeconds).toFixed(2),
    longestFreeze: +longest.toFixed(2),
  };
}

/** Waits (sampling) until `done(sample)` or `ms`; returns the samples and when it was met. */
async function until(viewer, done, ms) {
  const start = Date.now();
  const all = [];
  while (Date.now() - start < ms) {
    await sleep(250);
    const got = await samples(viewer);
    all.push(...got);
    const hit = got.find(done);
    if (hit) return { all, at: hit.t, atMs: hit.t - start };
  }
  return { all, at: null, atMs: null };
}

async function episode(mode, run) {
  const subnet = 1 + (randomBytes(1)[0] % 250);
  const scratch = await mkdtemp(path.join(tmpdir(), 'sfu-vs-direct-'));
  const viewNs = netns.createNamespace('view', subnet, 0);
  const pubNs = netns.createNamespace('pub', subnet, 1);
  let publisher;
  let viewer;
  try {
    forwardThrough(viewNs);
    forwardThrough(pubNs);
    const base = await startServer([], { host: viewNs.hostIp });
    const origin = new URL(base).origin;
    const args = [`--unsafely-treat-insecure-origin-as-secure=${origin}`, '--disable-features=WebRtcHideLocalIpsWithMdns'];
    const [pubBin, viewBin] = await Promise.all([
      netns.wrapperIn(pubNs, CHROMIUM_BIN, scratch), netns.wrapperIn(viewNs, CHROMIUM_BIN, scratch),
    ]);
    [publisher, viewer] = await Promise.all([
      launchParticipant('publisher', { executablePath: pubBin, args }),
      launchParticipant('viewer', { executablePath: viewBin, args }),
    ]);
    await viewer.page.addInitScript(watchFirstFrame);
    await Promise.all([publisher, viewer].map((p) => p.page.addInitScript(installGathered)));
    let joinedAt;
    if (mode === 'sfu') {
      const room = `bench-${randomBytes(4).toString('hex')}`;
      await publisher.page.goto(callUrl(base, room, 'publisher'), { waitUntil: 'load' });
      await publisher.page.waitForFunction(() => window.sfuDemo?.state.tx.camera?.sender, null, { timeout: 20_000 });
      await publisher.page.evaluate(async () => {
        const sender = window.sfuDemo.state.tx.camera.sender;
        const params = sender.getParameters();
        params.degradationPreference = 'maintain-resolution';
        await sender.setParameters(params);
      });
      await sleep(2_000); // the publisher's layers up, as for anyone joining a call under way
      joinedAt = Date.now();
      await viewer.page.goto(callUrl(base, room, 'viewer', { role: 'viewer' }), { waitUntil: 'load' });
    } else {
      // Any document of the server's origin (a secure context by the flag above) without the
      // demo's own camera preview: its style sheet.
      await Promise.all([publisher, viewer].map((p) => p.page.goto(`${origin}/style.css`, { waitUntil: 'load' })));
      joinedAt = Date.now();
      const offer = await publisher.page.evaluate(directOffer);
      const answer = await viewer.page.evaluate(directAnswer, offer);
      await publisher.page.evaluate((a) => window.__pc.setRemoteDescription(a), answer);
    }
    await viewer.page.waitForFunction(() => window.__bench.firstFrameAt, null, { timeout: 20_000, polling: 20 });
    const firstFrameMs = (await viewer.page.evaluate(() => window.__bench.firstFrameAt)) - joinedAt;
    await viewer.page.evaluate(startSampling, mode);
    const top = await until(viewer, (s) => s.width === 1280, TOP_MS);
    const topMs = top.at == null ? null : top.at - joinedAt;
    await sleep(OPEN_MS);
    const open = freezesBetween(await samples(viewer));

    netns.limitDownlink(viewNs, LIMIT_KBIT);
    const capStart = Date.now();
    const down = await until(viewer, (s) => s.width > 0 && s.width < 1280, CAP_MS);
    await sleep(Math.max(0, CAP_MS - (Date.now() - capStart)));
    const capped = freezesBetween([...down.all, ...(await samples(viewer))]);
    netns.clearDownlink(viewNs);
    const up = await until(viewer, (s) => s.width === 1280, RECOVER_MS);

    netns.setLoss(viewNs, 'downlink', LOSS_PERCENT);
    await samples(viewer);
    await sleep(LOSS_MS);
    const lossy = freezesBetween(await samples(viewer));
    netns.clearLoss(viewNs);

    const result = {
      mode, run, firstFrameMs, topMs, open, downgradeMs: down.atMs, capped, recoverMs: up.atMs,
      lossy, lossFpsShare: +(lossy.fps / open.fps).toFixed(2),
    };
    console.log(JSON.stringify(result));
    return result;
  } finally {
    await Promise.all([publisher, viewer].map(closeParticipant));
    await stopServer();
    netns.remove(viewNs);
    netns.remove(pubNs);
    await rm(scratch, { recursive: true, force: true });
  }
}

const range = (xs) => {
  const present = xs.filter((x) => x != null);
  const missing = xs.length - present.length;
  if (!present.length) return 'never';
  const lo = Math.min(...present);
  const hi = Math.max(...present);
  return `${lo === hi ? lo : `${lo}-${hi}`}${missing ? ` (never in ${missing})` : ''}`;
};
const seconds = (ms) => (ms == null ? null : +(ms / 1000).toFixed(1));

const results = [];
for (let run = 1; run <= RUNS; run++) {
  for (const mode of MODES) {
    console.error(`run ${run} of ${RUNS}: ${mode}`);
    results.push(await episode(mode, run));
  }
}
await mkdir(ARTIFACTS, { recursive: true });
await writeFile(path.join(ARTIFACTS, 'sfu-vs-direct.json'), `${JSON.stringify(results, null, 2)}\n`);
console.log(`\n| | first frame (ms) | to 1280 wide (s) | fps open | limit to narrower (s) | freezes under ${LIMIT_KBIT} kbit/s: count / total s / longest s | lift to 1280 (s) | fps at ${LOSS_PERCENT}% loss (share of open) | freezes at loss |`);
console.log('|---|---|---|---|---|---|---|---|---|');
for (const mode of MODES) {
  const rs = results.filter((r) => r.mode === mode);
  console.log(`| ${mode} (${rs.length} runs) | ${range(rs.map((r) => r.firstFrameMs))} | ${range(rs.map((r) => seconds(r.topMs)))} | `
    + `${range(rs.map((r) => r.open.fps))} | ${range(rs.map((r) => seconds(r.downgradeMs)))} | `
    + `${range(rs.map((r) => r.capped.freezes))} / ${range(rs.map((r) => r.capped.freezeSeconds))} / ${range(rs.map((r) => r.capped.longestFreeze))} | `
    + `${range(rs.map((r) => seconds(r.recoverMs)))} | ${range(rs.map((r) => r.lossy.fps))} (${range(rs.map((r) => r.lossFpsShare))}) | `
    + `${range(rs.map((r) => r.lossy.freezes))} / ${range(rs.map((r) => r.lossy.freezeSeconds))} s |`);
}
