// End-to-end test of the web demo: two headless Chromium participants join one room through the
// real server and must see and hear each other, and chat.
//
//   cd web-demo/tests && npm install && node --test
//
// Environment:
//   SFU_SERVER_BIN   server binary (default ../../target/debug/sfu-server, relative to this file)
//   SFU_SERVER_ARGS  extra arguments for the server, space separated (optional)
//   CHROMIUM_BIN     browser binary (default /usr/bin/chromium)
//
// Every wait is bounded; a watchdog ends the whole run after 90 s.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SERVER_BIN = process.env.SFU_SERVER_BIN
  ? path.resolve(process.env.SFU_SERVER_BIN)
  : path.resolve(HERE, '../../target/debug/sfu-server');
const SERVER_ARGS = ['--http-addr', '127.0.0.1:0', '--media-port', '0',
  ...(process.env.SFU_SERVER_ARGS ?? '').split(/\s+/).filter(Boolean)];
const CHROMIUM_BIN = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ARTIFACTS = path.join(HERE, 'artifacts');

const TOTAL_BUDGET_MS = 90_000;
const SERVER_START_MS = 30_000;
const MEDIA_MS = 15_000;
const SAMPLE_MS = 2_000;
const CHAT_MS = 10_000;

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
];

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Rejects if `promise` has not settled after `ms`. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The server process and the tail of its output, for diagnostics. */
const server = { child: null, log: [] };

function serverLogTail(lines = 40) {
  return server.log.slice(-lines).join('\n');
}

/** Starts the server and resolves with the web demo URL it prints. */
function startServer() {
  if (!existsSync(SERVER_BIN)) {
    return Promise.reject(new Error(
      `server binary not found at ${SERVER_BIN} (build it with cargo build, or set SFU_SERVER_BIN)`));
  }
  return new Promise((resolve, reject) => {
    const child = spawn(SERVER_BIN, SERVER_ARGS, { stdio: ['ignore', 'pipe', 'pipe'] });
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
          const match = /web demo\s+(http:\/\/\S+)/.exec(line);
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
      server.child = null;
      if (!found) {
        clearTimeout(timer);
        reject(new Error(`server exited (code ${code}, signal ${signal}) before printing its URL\n${serverLogTail()}`));
      }
    });
  });
}

/** Stops the server by its PID: SIGTERM, then SIGKILL after 5 s. */
async function stopServer() {
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

// Last resort if the run is cut short: never leave the server behind.
process.on('exit', () => {
  if (server.child?.pid) {
    try { process.kill(server.child.pid, 'SIGKILL'); } catch { /* already gone */ }
  }
});

/** One browser (own persistent context and profile) per participant. */
async function launchParticipant(name) {
  const userDataDir = await mkdtemp(path.join(tmpdir(), `sfu-demo-${name}-`));
  const participant = { name, userDataDir, context: null, page: null, errors: [] };
  try {
    participant.context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM_BIN,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 30_000,
    });
  } catch (err) {
    await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
    throw err;
  }
  const page = participant.context.pages()[0] ?? await participant.context.newPage();
  page.setDefaultTimeout(MEDIA_MS);
  page.setDefaultNavigationTimeout(MEDIA_MS);
  page.on('console', (msg) => {
    if (msg.type() === 'error') participant.errors.push(`console.error: ${msg.text()}`);
  });
  page.on('pageerror', (err) => participant.errors.push(`uncaught: ${err.message}`));
  participant.page = page;
  return participant;
}

async function closeParticipant(participant) {
  if (!participant) return;
  await withTimeout(participant.context?.close() ?? Promise.resolve(), 10_000, `closing ${participant.name}'s browser`)
    .catch(() => {});
  await rm(participant.userDataDir, { recursive: true, force: true }).catch(() => {});
}

/** What the page shows in its error banner, if anything, for failure messages. */
async function bannerText(participant) {
  try {
    return await withTimeout(participant.page.evaluate(() => {
      const banner = document.getElementById('banner');
      return banner && !banner.hidden ? banner.textContent.trim() : '';
    }), 2_000, 'reading the banner');
  } catch {
    return '';
  }
}

async function diagnostics(participant) {
  const banner = await bannerText(participant);
  return [
    banner && `${participant.name}'s banner: ${banner}`,
    participant.errors.length && `${participant.name}'s console errors:\n  ${participant.errors.join('\n  ')}`,
    `server output (tail):\n${serverLogTail(20)}`,
  ].filter(Boolean).join('\n');
}

/** Waits until the page shows exactly one remote tile whose video has a size. */
async function waitForRemoteVideo(participant) {
  try {
    await participant.page.waitForFunction(() => {
      const tiles = document.querySelectorAll('[data-testid="tile"]');
      const video = document.querySelector('[data-testid="tile"] video[data-participant]');
      return tiles.length === 1 && video !== null && video.videoWidth > 0;
    }, null, { timeout: MEDIA_MS, polling: 250 });
  } catch (err) {
    throw new Error(`${participant.name} saw no playing remote video within ${MEDIA_MS} ms: ` +
      `${err.message.split('\n')[0]}\n${await diagnostics(participant)}`);
  }
}

/** Two samples, SAMPLE_MS apart, of the remote video element and of the subscribe connection's stats. */
function sampleMedia(participant) {
  return withTimeout(participant.page.evaluate(async (sampleMs) => {
    const { state } = window.sfuDemo;
    const video = document.querySelector('[data-testid="tile"] video[data-participant]');
    const sample = async () => {
      let framesDecoded = 0;
      let audioPackets = 0;
      const videoCodecs = [];
      const stats = await state.subPc.getStats();
      stats.forEach((report) => {
        if (report.type !== 'inbound-rtp') return;
        if (report.kind === 'video') {
          framesDecoded += report.framesDecoded ?? 0;
          const codec = report.codecId && stats.get(report.codecId);
          if (codec && report.framesDecoded > 0) videoCodecs.push(codec.mimeType.toLowerCase());
        }
        if (report.kind === 'audio') audioPackets += report.packetsReceived ?? 0;
      });
      return {
        videoCodecs,
        videoWidth: video.videoWidth,
        videoHeight: video.videoHeight,
        totalVideoFrames: video.getVideoPlaybackQuality().totalVideoFrames,
        framesDecoded,
        audioPackets,
      };
    };
    const first = await sample();
    await new Promise((resolve) => setTimeout(resolve, sampleMs));
    const second = await sample();
    return { first, second };
  }, SAMPLE_MS), SAMPLE_MS + 5_000, `sampling ${participant.name}'s media`);
}

// ---------------------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------------------

for (const codec of ['vp8', 'h264']) describe(`web demo: two participants in one room (${codec})`, { timeout: TOTAL_BUDGET_MS }, () => {
  const room = `e2e-${codec}-${randomBytes(4).toString('hex')}`;
  let alice;
  let bob;

  // Whatever happens, the run ends within the budget and the server is killed.
  const watchdog = setTimeout(() => {
    console.error(`watchdog: the test did not finish within ${TOTAL_BUDGET_MS} ms`);
    if (server.child?.pid) {
      try { process.kill(server.child.pid, 'SIGKILL'); } catch { /* already gone */ }
    }
    process.exit(1);
  }, TOTAL_BUDGET_MS);
  watchdog.unref();

  before(async () => {
    if (!existsSync(CHROMIUM_BIN)) throw new Error(`Chromium not found at ${CHROMIUM_BIN} (set CHROMIUM_BIN)`);
    // Start everything at once; keep whatever did start, so `after` can clean it up.
    const results = await Promise.allSettled([
      startServer(),
      launchParticipant('alice').then((p) => { alice = p; }),
      launchParticipant('bob').then((p) => { bob = p; }),
    ]);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    const demoUrl = results[0].value;
    for (const participant of [alice, bob]) {
      const url = new URL(demoUrl);
      url.searchParams.set('room', room);
      url.searchParams.set('name', participant.name);
      url.searchParams.set('autojoin', '1');
      url.searchParams.set('codec', codec);
      await participant.page.goto(url.toString(), { waitUntil: 'load' });
    }
  }, { timeout: SERVER_START_MS + 20_000 });

  after(async () => {
    await mkdir(ARTIFACTS, { recursive: true }).catch(() => {});
    for (const participant of [alice, bob]) {
      if (!participant?.page) continue;
      await participant.page.screenshot({ path: path.join(ARTIFACTS, `${participant.name}-${codec}.png`), timeout: 5_000 })
        .catch((err) => console.error(`screenshot of ${participant.name} failed: ${err.message}`));
    }
    await Promise.all([closeParticipant(alice), closeParticipant(bob)]);
    await stopServer();
    clearTimeout(watchdog);
  }, { timeout: 25_000 });

  it('each participant sees one remote video that is playing, and receives audio', { timeout: MEDIA_MS + SAMPLE_MS + 10_000 }, async () => {
    await Promise.all([waitForRemoteVideo(alice), waitForRemoteVideo(bob)]);
    const samples = await Promise.all([sampleMedia(alice), sampleMedia(bob)]);
    for (const [participant, { first, second }] of [[alice, samples[0]], [bob, samples[1]]]) {
      const detail = `${participant.name}: ${JSON.stringify({ first, second })}`;
      assert.ok(second.videoWidth > 0, `remote video has no size; ${detail}`);
      assert.ok(second.totalVideoFrames > first.totalVideoFrames || second.framesDecoded > first.framesDecoded,
        `remote video is not advancing over ${SAMPLE_MS} ms; ${detail}`);
      assert.ok(second.audioPackets > first.audioPackets,
        `no inbound audio packets over ${SAMPLE_MS} ms; ${detail}`);
      assert.deepEqual(second.videoCodecs, [`video/${codec}`], `decoded with the codec asked for; ${detail}`);
    }
  });

  it('a chat message typed by one participant appears at the other', { timeout: 2 * CHAT_MS + 5_000 }, async () => {
    for (const [from, to] of [[alice, bob], [bob, alice]]) {
      const text = `hello from ${from.name} ${randomBytes(3).toString('hex')}`;
      await from.page.fill('#chat-input', text, { timeout: CHAT_MS }); // waits for the channel to open
      await from.page.press('#chat-input', 'Enter', { timeout: CHAT_MS });
      try {
        await to.page.waitForFunction(([sender, body]) => [...document.querySelectorAll('#chat-log li')]
          .some((li) => li.querySelector('.chat-from')?.textContent === sender &&
            li.querySelector('.chat-text')?.textContent === body), [from.name, text], { timeout: CHAT_MS, polling: 200 });
      } catch (err) {
        throw new Error(`${to.name} did not receive "${text}" from ${from.name}: ${err.message.split('\n')[0]}\n` +
          await diagnostics(to));
      }
    }
  });

  it('no console errors in either page', async () => {
    await sleep(200);
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  });
});
