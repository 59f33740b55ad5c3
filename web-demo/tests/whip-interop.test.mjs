// Interop with WebRTC stacks not written here: ffmpeg's WHIP muxer (ffmpeg 9, from the
// imageio-ffmpeg wheel) publishes H264 + Opus into a room; the demo page in viewer mode decodes
// it, and a plain WHEP exchange made with Chromium's own RTCPeerConnection decodes it too.
// Stopping ffmpeg (which DELETEs its WHIP resource) removes it from the room.
//
// Environment: FFMPEG_WHIP, an ffmpeg with the whip muxer (default: the one of the
// imageio-ffmpeg package in ../../.venv, which the test command installs).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  callUrl, closeParticipant, launchParticipant, newPage, sampleRemoteMedia, startServer,
  startWatchdog, stopServer, waitUntil, withTimeout,
} from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOM = 'interop';

function ffmpegPath() {
  if (process.env.FFMPEG_WHIP) return process.env.FFMPEG_WHIP;
  const python = path.resolve(HERE, '../../.venv/bin/python');
  return execFileSync(python, ['-c', 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())'])
    .toString().trim();
}

async function devToken(base, identity) {
  const url = new URL(`/dev/token?room=${ROOM}&identity=${identity}&name=${identity}`, base);
  const res = await fetch(url);
  assert.equal(res.status, 200, 'dev token');
  return (await res.json()).token;
}

describe('WHIP/WHEP interop: ffmpeg publishes, Chromium watches', { timeout: 150_000 }, () => {
  const stopWatchdog = startWatchdog(150_000);
  let base;
  let ffmpeg;
  const ffmpegLog = [];
  let viewer;

  before(async () => {
    base = await startServer();
    const token = await devToken(base, 'ffmpeg');
    ffmpeg = spawn(ffmpegPath(), [
      '-hide_banner', '-loglevel', 'warning', '-re',
      '-f', 'lavfi', '-i', 'testsrc=size=640x360:rate=30',
      '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
      '-t', '120', '-pix_fmt', 'yuv420p',
      '-c:v', 'libx264', '-profile:v', 'baseline', '-tune', 'zerolatency', '-g', '30', '-b:v', '600k',
      '-c:a', 'libopus', '-ar', '48000', '-ac', '2',
      '-f', 'whip', '-authorization', token, new URL(`/whip/${ROOM}`, base).toString(),
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    ffmpeg.stderr.setEncoding('utf8');
    ffmpeg.stderr.on('data', (chunk) => ffmpegLog.push(chunk));
    viewer = await launchParticipant('viewer');
  }, { timeout: 60_000 });

  after(async () => {
    if (ffmpeg && ffmpeg.exitCode === null) ffmpeg.kill('SIGKILL');
    await closeParticipant(viewer);
    await stopServer();
    stopWatchdog();
  }, { timeout: 30_000 });

  it('the demo in viewer mode decodes the WHIP publisher (H264) and plays its audio', { timeout: 40_000 }, async () => {
    await viewer.page.goto(callUrl(base, ROOM, 'viewer', { role: 'viewer' }));
    await waitUntil(viewer, 'a playing video from ffmpeg', () => {
      const video = document.querySelector('[data-testid="tile"] video');
      return video && video.videoWidth === 640;
    }, null, { timeout: 20_000 }).catch((err) => {
      throw new Error(`${err.message}\nffmpeg: ${ffmpegLog.join('').slice(-2000)}`);
    });
    const tiles = await sampleRemoteMedia(viewer);
    assert.equal(tiles.length, 1, 'one remote tile: the WHIP publisher');
    const { first: a, second: b } = tiles[0];
    assert.ok(b.framesDecoded > a.framesDecoded, `frames decoded rise: ${JSON.stringify({ a, b })}`);
    assert.ok(b.audioPackets > a.audioPackets, `audio arrives: ${JSON.stringify({ a, b })}`);
    assert.deepEqual(b.videoCodecs, ['video/h264']);
    assert.equal(b.videoWidth, 640);
  });

  it("a WHEP subscriber made with Chromium's RTCPeerConnection decodes the same stream", { timeout: 40_000 }, async () => {
    const token = await devToken(base, 'whep-viewer');
    const page = await newPage(viewer);
    await page.goto(base);
    const created = await page.evaluate(async (bearer) => {
      const pc = new RTCPeerConnection();
      pc.addTransceiver('video', { direction: 'recvonly' });
      pc.addTransceiver('audio', { direction: 'recvonly' });
      await pc.setLocalDescription(await pc.createOffer());
      const res = await fetch('/whep/interop', {
        method: 'POST',
        headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${bearer}` },
        body: pc.localDescription.sdp,
      });
      const body = await res.text();
      if (res.status === 201) await pc.setRemoteDescription({ type: 'answer', sdp: body });
      window.whep = { pc, location: res.headers.get('Location') };
      return { status: res.status, location: res.headers.get('Location'), etag: res.headers.get('ETag'),
        contentType: res.headers.get('Content-Type'), body: res.status === 201 ? '' : body };
    }, token);
    assert.equal(created.status, 201, created.body);
    assert.match(created.location, /^\/whep\/interop\/\w+$/);
    assert.ok(created.etag, 'ETag');
    assert.equal(created.contentType, 'application/sdp');

    const decoded = () => page.evaluate(async () => {
      let frames = 0;
      let audio = 0;
      let width = 0;
      (await window.whep.pc.getStats()).forEach((r) => {
        if (r.type !== 'inbound-rtp') return;
        if (r.kind === 'video') { frames += r.framesDecoded ?? 0; width = r.frameWidth ?? width; }
        if (r.kind === 'audio') audio += r.packetsReceived ?? 0;
      });
      return { frames, audio, width };
    });
    let stats = { frames: 0, audio: 0 };
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && (stats.frames < 30 || stats.audio < 30)) {
      await new Promise((r) => setTimeout(r, 250));
      stats = await decoded();
    }
    assert.ok(stats.frames >= 30 && stats.audio >= 30, `WHEP decodes video and receives audio: ${JSON.stringify(stats)}`);
    assert.equal(stats.width, 640);

    const deleted = await page.evaluate(async () => (await fetch(window.whep.location, { method: 'DELETE' })).status);
    assert.equal(deleted, 200);
    const again = await page.evaluate(async () => (await fetch(window.whep.location, { method: 'DELETE' })).status);
    assert.equal(again, 404);
    await page.close();
  });

  it('stopping ffmpeg ends its WHIP session: its tile leaves the room within 3 s', { timeout: 20_000 }, async () => {
    const exited = new Promise((resolve) => ffmpeg.once('exit', resolve));
    ffmpeg.kill('SIGINT'); // ffmpeg finishes the stream and DELETEs its resource
    await withTimeout(exited, 10_000, 'ffmpeg exit');
    await waitUntil(viewer, 'the WHIP publisher tile removed', () => document.querySelectorAll('[data-testid="tile"]').length === 0,
      null, { timeout: 3_000 });
  });
});
