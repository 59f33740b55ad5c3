// Shared by the browser tests: starting and stopping the server, one headless Chromium per
// participant, bounded waits that explain themselves on failure, and sampling what a page
// receives.
//
// Environment:
//   SFU_SERVER_BIN   server binary (default ../../target/debug/sfu-server, relative to this file)
//   SFU_SERVER_ARGS  extra arguments for the server, space separated (optional)
//   SFU_SERVER_LOG   file to append the server's whole output to (optional)
//   SFU_CONSOLE_LOG  file to append every page's console output to, prefixed by participant (optional)
//   CHROMIUM_BIN     browser binary (default /usr/bin/chromium)

import { spawn } from 'node:child_process';
import { appendFileSync, existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const WEB_ROOT = path.resolve(HERE, '..');
export const ARTIFACTS = path.join(HERE, 'artifacts');
export const SERVER_BIN = process.env.SFU_SERVER_BIN
  ? path.resolve(process.env.SFU_SERVER_BIN)
  : path.resolve(HERE, '../../target/debug/sfu-server');
export const CHROMIUM_BIN = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const SERVER_START_MS = 30_000;

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  // Pages here join by link without a click, so Chromium's autoplay policy may refuse to play
  // remote audio (the demo then offers an "Enable audio" button): it did so now and then, and
  // a viewer decoded audio it never played (totalAudioEnergy 0). A user who clicks "Join"
  // gives the page that permission; the tests check the audio, not the policy.
  '--autoplay-policy=no-user-gesture-required',
];

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Rejects if `promise` has not settled after `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------------------------

/** The running server process and the tail of its output, for diagnostics. */
const server = { child: null, log: [] };

export function serverLogTail(lines = 40) {
  return server.log.slice(-lines).join('\n');
}

/**
 * Starts the server (serving the web demo from this checkout's web-demo/ directory) and
 * resolves with the demo URL it prints. HTTP and media listen on `host` (a free port each).
 */
export function startServer(extraArgs = [], { host = '127.0.0.1' } = {}) {
  if (!existsSync(SERVER_BIN)) {
    return Promise.reject(new Error(
      `server binary not found at ${SERVER_BIN} (build it with cargo build, or set SFU_SERVER_BIN)`));
  }
  // The development key is refused on a non-loopback address unless asked for (--dev).
  const dev = /^(127\.|::1$|localhost$)/.test(host) ? [] : ['--dev'];
  const http = host.includes(':') ? `[${host}]:0` : `${host}:0`;
  const args = ['--http-addr', http, '--media-ip', host, '--media-port', '0', '--web-root', WEB_ROOT, ...dev, ...extraArgs,
    ...(process.env.SFU_SERVER_ARGS ?? '').split(/\s+/).filter(Boolean)];
  server.log = [];
  return new Promise((resolve, reject) => {
    const child = spawn(SERVER_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    server.child = child;
    let found = false;
    const timer = setTimeout(() => {
      reject(new Error(`no "web demo <url>" line from the server within ${SERVER_START_MS} ms\n${serverLogTail()}`));
    }, SERVER_START_MS);

    const onOutput = (stream) => {
      let pending = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        pending += chunk;
        const lines = pending.split('\n');
        pending = lines.pop();
        for (const raw of lines) {
          const line = raw.replace(/\x1b\[[0-9;]*m/g, ''); // strip colours
          server.log.push(line);
          if (server.log.length > 500) server.log.shift();
          if (process.env.SFU_SERVER_LOG) appendFileSync(process.env.SFU_SERVER_LOG, `${line}\n`);
          const match = /web demo\s+(https?:\/\/\S+)/.exec(line);
          if (match && !found) {
            found = true;
            clearTimeout(timer);
            resolve(match[1]);
          }
        }
      });
    };
    // The URL line is printed on stdout; stderr (logs) is read too, for diagnostics.
    onOutput(child.stdout);
    onOutput(child.stderr);

    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`could not start ${SERVER_BIN}: ${err.message}`));
    });
    child.on('exit', (code, signal) => {
      if (server.child === child) server.child = null;
      if (!found) {
        clearTimeout(timer);
        reject(new Error(`server exited (code ${code}, signal ${signal}) before printing its URL\n${serverLogTail()}`));
      }
    });
  });
}

/** Stops the server by its PID: SIGTERM, then SIGKILL after 5 s. */
export async function stopServer() {
  const child = server.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  try {
    process.kill(child.pid, 'SIGTERM');
  } catch {
    return; // already gone
  }
  try {
    await withTimeout(exited, 5_000, 'server exit after SIGTERM');
  } catch {
    try { process.kill(child.pid, 'SIGKILL'); } catch { /* already gone */ }
    await withTimeout(exited, 2_000, 'server exit after SIGKILL').catch(() => {});
  }
}

function killServerNow() {
  if (server.child?.pid) {
    try { process.kill(server.child.pid, 'SIGKILL'); } catch { /* already gone */ }
  }
}

// Last resort if the run is cut short: never leave the server behind.
process.on('exit', killServerNow);

/** Ends the whole process (and the server) if the file's tests have not finished after `ms`. */
export function startWatchdog(ms) {
  const watchdog = setTimeout(() => {
    console.error(`watchdog: the tests did not finish within ${ms} ms`);
    killServerNow();
    process.exit(1);
  }, ms);
  watchdog.unref();
  return () => clearTimeout(watchdog);
}

// ---------------------------------------------------------------------------------------------
// Browsers: one persistent context (own profile) per participant.
// ---------------------------------------------------------------------------------------------

/**
 * Launches a participant's browser. With `speaks`, its fake microphone plays synthetic speech
 * (3 s of talking, 2 s of silence, looped) instead of Chromium's default short beeps, which
 * are too brief to count as speaking. `executablePath` replaces the browser binary (e.g. a
 * wrapper that runs it in a network namespace); `args` are added to its flags.
 */
export async function launchParticipant(name, {
  defaultTimeout = 15_000, speaks = false, executablePath = CHROMIUM_BIN, args: extraArgs = [],
} = {}) {
  if (!existsSync(CHROMIUM_BIN)) throw new Error(`Chromium not found at ${CHROMIUM_BIN} (set CHROMIUM_BIN)`);
  const userDataDir = await mkdtemp(path.join(tmpdir(), `sfu-demo-${name}-`));
  const participant = { name, userDataDir, context: null, page: null, errors: [], console: [] };
  const args = [...CHROMIUM_ARGS, ...extraArgs];
  try {
    if (speaks) {
      const wav = path.join(userDataDir, 'speech.wav');
      await writeFile(wav, speechWav());
      args.push(`--use-file-for-fake-audio-capture=${wav}`);
    }
    participant.context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      args,
      timeout: 30_000,
    });
  } catch (err) {
    await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
    throw err;
  }
  participant.page = participant.context.pages()[0] ?? await participant.context.newPage();
  watchPage(participant, participant.page, defaultTimeout);
  return participant;
}

/** Opens another page in the participant's browser (errors are collected with theirs). */
export async function newPage(participant, defaultTimeout = 15_000) {
  const page = await participant.context.newPage();
  watchPage(participant, page, defaultTimeout);
  return page;
}

/** How many of a page's latest console lines a failure message shows. */
const CONSOLE_LINES = 20;

function watchPage(participant, page, defaultTimeout) {
  page.setDefaultTimeout(defaultTimeout);
  page.setDefaultNavigationTimeout(defaultTimeout);
  page.on('console', (msg) => {
    if (msg.type() === 'error') participant.errors.push(`console.error: ${msg.text()}`);
    // The demo's own account of its connection (resumes, ICE restarts, reconnects), for failures.
    const line = `${new Date().toISOString().slice(11, 23)} ${msg.type()}: ${msg.text()}`;
    participant.console.push(line);
    if (process.env.SFU_CONSOLE_LOG) appendFileSync(process.env.SFU_CONSOLE_LOG, `${participant.name} ${line}\n`);
    if (participant.console.length > CONSOLE_LINES) participant.console.shift();
  });
  page.on('pageerror', (err) => participant.errors.push(`uncaught: ${err.message}`));
}

/**
 * 5 s of mono 16-bit WAV: 3 s of a synthetic vowel (a 120 Hz glottal pulse train through three
 * formant resonators, in four syllables a second), then 2 s of silence.
 */
function speechWav(rate = 48_000) {
  const seconds = 5;
  const n = seconds * rate;
  const filters = [[700, 110], [1220, 120], [2600, 160]].map(([freq, bandwidth]) => {
    const r = Math.exp((-Math.PI * bandwidth) / rate);
    return { a1: 2 * r * Math.cos((2 * Math.PI * freq) / rate), a2: -r * r, y1: 0, y2: 0 };
  });
  const out = new Float32Array(n);
  let phase = 0;
  let peak = 1e-9;
  for (let i = 0; i < n; i++) {
    const t = i / rate;
    phase += (120 + 15 * Math.sin(2 * Math.PI * 0.7 * t)) / rate;
    let x = 0;
    if (phase >= 1) {
      phase -= 1;
      x = 1;
    }
    let y = 0;
    for (const f of filters) {
      const v = x + f.a1 * f.y1 + f.a2 * f.y2;
      f.y2 = f.y1;
      f.y1 = v;
      y += v;
    }
    const syllable = (t * 4) % 1;
    const envelope = t < 3 && syllable < 0.85 ? Math.sin((Math.PI * syllable) / 0.85) ** 0.3 : 0;
    out[i] = y * envelope;
    peak = Math.max(peak, Math.abs(out[i]));
  }
  const data = Buffer.alloc(n * 2);
  for (let i = 0; i < n; i++) data.writeInt16LE(Math.round((out[i] / peak) * 0.8 * 32767), i * 2);
  const header = Buffer.alloc(44);
  header.write('RIFF', 0);
  header.writeUInt32LE(36 + data.length, 4);
  header.write('WAVEfmt ', 8);
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28); // bytes per second
  header.writeUInt16LE(2, 32); // bytes per frame
  header.writeUInt16LE(16, 34); // bits per sample
  header.write('data', 36);
  header.writeUInt32LE(data.length, 40);
  return Buffer.concat([header, data]);
}

export async function closeParticipant(participant) {
  if (!participant) return;
  await withTimeout(participant.context?.close() ?? Promise.resolve(), 10_000, `closing ${participant.name}'s browser`)
    .catch(() => {});
  await rm(participant.userDataDir, { recursive: true, force: true }).catch(() => {});
}

/** The demo URL for a room: `?room=R&name=N&autojoin=1` plus `extra` parameters. */
export function callUrl(base, room, name, extra = {}) {
  const url = new URL(base);
  url.search = new URLSearchParams({ room, name, autojoin: '1', ...extra }).toString();
  return url.toString();
}

// ---------------------------------------------------------------------------------------------
// Waiting and diagnostics.
// ---------------------------------------------------------------------------------------------

/** What the page shows in its banner, if anything. */
export async function bannerText(page) {
  try {
    return await withTimeout(page.evaluate(() => {
      const banner = document.getElementById('banner');
      return banner && !banner.hidden ? banner.textContent.trim() : '';
    }), 2_000, 'reading the banner');
  } catch {
    return '';
  }
}

export async function diagnostics(participant, page = participant.page) {
  const banner = await bannerText(page);
  return [
    banner && `${participant.name}'s banner: ${banner}`,
    participant.errors.length && `${participant.name}'s console errors:\n  ${participant.errors.join('\n  ')}`,
    participant.console.length && `${participant.name}'s console (last ${CONSOLE_LINES} lines):\n  ${participant.console.join('\n  ')}`,
    `server output (tail):\n${serverLogTail(15)}`,
  ].filter(Boolean).join('\n');
}

/**
 * Waits (polling, bounded) until `fn(arg)` is truthy in the page; on timeout, fails with `what`,
 * the page's last answer from `describe` (if given), its banner, errors and the server's log.
 */
export async function waitUntil(participant, what, fn, arg, { timeout = 10_000, page = participant.page, describe } = {}) {
  try {
    return await page.waitForFunction(fn, arg, { timeout, polling: 200 });
  } catch (err) {
    let seen = '';
    if (describe) {
      seen = await withTimeout(page.evaluate(describe, arg), 2_000, 'describing the page')
        .then((v) => `\n${participant.name}'s page: ${JSON.stringify(v)}`, () => '');
    }
    throw new Error(`${participant.name}: ${what} (not within ${timeout} ms: ${err.message.split('\n')[0]})${seen}\n` +
      await diagnostics(participant, page));
  }
}

/** In-page: the remote tiles and their videos, for failure messages. */
/** In the page (`waitUntil`): `count` remote tiles, each with a video that has a size. */
export function playingTiles(count) {
  const tiles = document.querySelectorAll('[data-testid="tile"]');
  return tiles.length === count && [...tiles].every((t) => t.querySelector('video').videoWidth > 0);
}

export function describeTiles() {
  return [...document.querySelectorAll('[data-testid="tile"], [data-testid="screen-tile"]')].map((tile) => ({
    testid: tile.dataset.testid,
    name: tile.querySelector('.tile-name')?.textContent,
    videoWidth: tile.querySelector('video')?.videoWidth,
    classes: tile.className,
    stats: tile.querySelector('.stats')?.textContent,
  }));
}

/**
 * Two samples, `sampleMs` apart, of every remote participant tile: its video element's size,
 * frames decoded for the tile's video track and packets received on the participant's audio
 * tracks (from each receiver's getStats).
 */
export function sampleRemoteMedia(participant, sampleMs = 2_000) {
  return withTimeout(participant.page.evaluate(async (ms) => {
    const { state } = window.sfuDemo;
    const tiles = [...document.querySelectorAll('[data-testid="tile"]')];
    const sample = () => Promise.all(tiles.map(async (tile) => {
      const remote = state.remoteParticipants.get(tile.dataset.participantId);
      const video = tile.querySelector('video');
      let framesDecoded = 0;
      let audioPackets = 0;
      let audioEnergy = 0;
      const videoCodecs = [];
      const audioCodecs = [];
      for (const [trackId, track] of remote?.tracks ?? []) {
        const receiver = state.subPc?.getReceivers().find((r) => r.track === track);
        if (!receiver) continue;
        const stats = await receiver.getStats();
        stats.forEach((r) => {
          if (r.type !== 'inbound-rtp') return;
          if (r.kind === 'video' && trackId === video.dataset.track) {
            framesDecoded += r.framesDecoded ?? 0;
            const codec = r.codecId && stats.get(r.codecId);
            if (codec && r.framesDecoded > 0) videoCodecs.push(codec.mimeType.toLowerCase());
          }
          if (r.kind === 'audio') {
            audioPackets += r.packetsReceived ?? 0;
            audioEnergy += r.totalAudioEnergy ?? 0;
            const codec = r.codecId && stats.get(r.codecId);
            if (codec && r.packetsReceived > 0) audioCodecs.push(codec.mimeType.toLowerCase());
          }
        });
      }
      return {
        name: tile.querySelector('.tile-name').textContent,
        videoWidth: video.videoWidth,
        framesDecoded,
        audioPackets,
        audioEnergy,
        videoCodecs,
        audioCodecs,
      };
    }));
    const first = await sample();
    await new Promise((resolve) => setTimeout(resolve, ms));
    const second = await sample();
    return first.map((f, i) => ({ name: f.name, first: f, second: second[i] }));
  }, sampleMs), sampleMs + 5_000, `sampling ${participant.name}'s media`);
}

/**
 * Makes the publisher keep its resolution under CPU load (it lowers the frame rate instead):
 * on a busy two-core test machine Chromium would otherwise stop its top layer now and then,
 * which is the publisher's choice, not what these tests are about. Run in the publisher's page
 * (`waitUntil(participant, ..., keepResolution)`): false until its camera is being sent.
 */
export function keepResolution() {
  return (async () => {
    const sender = window.sfuDemo.state.tx.camera?.sender;
    if (!sender) return false;
    const params = sender.getParameters();
    params.degradationPreference = 'maintain-resolution';
    await sender.setParameters(params);
    return true;
  })();
}

/** In-page: picks `quality` in the menu of `name`'s tile (as a click would: a `change` event). */
export function chooseQuality([name, quality]) {
  const tile = [...document.querySelectorAll('[data-testid="tile"]')]
    .find((t) => t.querySelector('.tile-name')?.textContent === name);
  const select = tile.querySelector('select.quality');
  select.value = quality;
  select.dispatchEvent(new Event('change'));
}

/**
 * Polls `fn(arg)` in the participant's page until `ok(value)`; on timeout fails with `what`,
 * the last value seen and the page's diagnostics. Resolves with the value that passed.
 */
export async function pollUntil(participant, what, fn, arg, ok, { timeout = 20_000, every = 250 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await withTimeout(participant.page.evaluate(fn, arg), 5_000, `evaluating in ${participant.name}'s page`)
      .catch((err) => ({ error: err.message }));
    if (ok(last)) return last;
    if (Date.now() >= deadline) break;
    await sleep(every);
  }
  throw new Error(`${participant.name}: ${what} (not within ${timeout} ms); last seen: ${JSON.stringify(last)}\n` +
    await diagnostics(participant));
}

/**
 * Starts the server and launches a browser per name, at the same time; each participant is
 * put in `into[name]` as soon as it is up (so an `after` can close those that started even
 * if another failed). Resolves with the server's base URL.
 */
export async function startServerAndParticipants(names, into, serverArgs = []) {
  const results = await Promise.allSettled([
    startServer(serverArgs),
    ...names.map((name) => launchParticipant(name).then((p) => { into[name] = p; })),
  ]);
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
  return results[0].value;
}

