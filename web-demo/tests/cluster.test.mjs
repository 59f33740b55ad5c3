// Two server processes in cluster mode around a real redis-server: a room is hosted by one node,
// and the demo opened on the other node is sent there (`room_elsewhere`) and sees the call.
// When the hosting node is killed, the demo on the other node reconnects to its own server,
// which takes the room over once the dead node's claim lapses (2 s time to live), and the demo
// whose own server died joins there too (the `alternates` its `joined` named). Then, with the
// media relay on: the demo opened as a viewer (`role=viewer`) on the node that does not host
// the room is served there, the host's video and audio relayed to it, with the host's
// participant shown, its active speaker and its chat; opened again as a participant there,
// its camera crosses to the host's member too.
//
//   cd web-demo/tests && npm install && node --test cluster.test.mjs
//
// Environment: see harness.mjs. Every wait is bounded; a watchdog ends the run after 120 s.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import {
  SERVER_BIN, WEB_ROOT, startWatchdog, launchParticipant, closeParticipant, callUrl, waitUntil,
  describeTiles, withTimeout, sleep, playingTiles,
} from './harness.mjs';

const TOTAL_BUDGET_MS = 120_000;
const JOIN_MS = 20_000;

const stopWatchdog = startWatchdog(TOTAL_BUDGET_MS);
after(() => stopWatchdog());

/** Children started here, killed by PID at the end (and if the run is cut short). */
const children = new Set();
const killAll = () => {
  for (const child of children) {
    try { process.kill(child.pid, 'SIGKILL'); } catch { /* already gone */ }
  }
};
process.on('exit', killAll);

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** A redis-server on a free port, nothing persisted; resolves once it accepts connections. */
async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' });
  children.add(child);
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const up = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => { socket.end(); resolve(true); });
      socket.once('error', () => resolve(false));
    });
    if (up) return { child, url: `redis://127.0.0.1:${port}` };
    await sleep(50);
  }
  throw new Error('redis-server did not start (Debian: apt-get install redis-server)');
}

/** A cluster node serving this checkout's demo; resolves with its process and demo URL. */
function startNode(redisUrl, id, extra = []) {
  const args = ['--http-addr', '127.0.0.1:0', '--media-ip', '127.0.0.1', '--media-port', '0', '--web-root', WEB_ROOT,
    '--redis-url', redisUrl, '--node-id', id, '--node-ttl', '2', '--workers', '1', ...extra];
  const child = spawn(SERVER_BIN, args, { stdio: ['ignore', 'pipe', 'ignore'] });
  children.add(child);
  return withTimeout(new Promise((resolve, reject) => {
    let pending = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      pending += chunk;
      const match = pending.match(/web demo\s+(\S+)/);
      if (match) resolve({ child, base: match[1] });
    });
    child.once('exit', (code) => reject(new Error(`node ${id} exited (${code})`)));
  }), 15_000, `node ${id} starting`);
}

/** A gauge from a node's /metrics. */
async function gauge(base, name) {
  const text = await withTimeout(fetch(new URL('/metrics', base)).then((r) => r.text()), 5_000, 'reading /metrics');
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}

/** In the page: the status says the call is up. */
function connected() {
  return document.querySelector('[data-testid="status"]')?.textContent === 'connected';
}

describe('cluster mode: a room on one node, the demo sent to it from another', () => {
  const room = `cluster-${randomBytes(4).toString('hex')}`;
  let a;
  let b;
  let alice;
  let bob;

  before(async () => {
    const redis = await startRedis();
    [a, b, alice, bob] = await Promise.all([
      startNode(redis.url, 'a'),
      startNode(redis.url, 'b'),
      launchParticipant('alice'),
      launchParticipant('bob'),
    ]);
  }, { timeout: 60_000 });

  after(async () => {
    await Promise.all([alice, bob].filter(Boolean).map(closeParticipant));
    killAll();
  }, { timeout: 30_000 });

  it('bob opens the demo on node b and is sent to node a, where alice is: they see each other', { timeout: 2 * JOIN_MS + 10_000 }, async () => {
    await alice.page.goto(callUrl(a.base, room, 'alice'), { waitUntil: 'load' });
    await waitUntil(alice, 'joined on node a', connected, null, { timeout: JOIN_MS });
    const followed = new Promise((resolve) => bob.page.on('console', (m) => {
      if (m.text().includes('hosted by another server')) resolve(m.text());
    }));
    await bob.page.goto(callUrl(b.base, room, 'bob'), { waitUntil: 'load' });
    await Promise.all([alice, bob].map((p) => waitUntil(p, 'one remote tile with playing video', playingTiles, 1,
      { timeout: JOIN_MS, describe: describeTiles })));
    const note = await withTimeout(followed, 1_000, 'the redirect logged');
    assert.match(note, new RegExp(new URL(a.base).host));
    assert.equal(await gauge(a.base, 'sfu_rooms'), 1, 'node a hosts the room');
    assert.equal(await gauge(b.base, 'sfu_rooms'), 0, 'node b hosts nothing');
    assert.equal(await gauge(a.base, 'sfu_participants'), 2);
  });

  it('node a is killed: both come back to node b, which takes the room over, and see each other', { timeout: JOIN_MS + 30_000 }, async (t) => {
    process.kill(a.child.pid, 'SIGKILL');
    const killed = Date.now();
    // Bob's page goes back to its own server (b), which starts the room once a's claim
    // lapses; alice's page finds its own server gone and joins b, named in her `alternates`.
    const deadline = Date.now() + 30_000;
    let participants = 0;
    while (Date.now() < deadline) {
      participants = await gauge(b.base, 'sfu_participants');
      if (participants === 2) break;
      await sleep(250);
    }
    assert.equal(participants, 2, 'node b hosts the room now, with alice and bob');
    const back = Date.now() - killed;
    assert.equal(await gauge(b.base, 'sfu_rooms'), 1);
    await Promise.all([alice, bob].map((p) => waitUntil(p, 'back in the call, seeing the other', playingTiles, 1,
      { timeout: JOIN_MS, describe: describeTiles })));
    t.diagnostic(`both back in the room on node b ${back} ms after node a was killed; video again after ${Date.now() - killed} ms`);
  });

  it('no console errors in any page but failed connections to the dead node', () => {
    const unexpected = (p) => p.errors.filter((e) => !/ERR_CONNECTION_REFUSED|WebSocket|Failed to load resource/.test(e));
    assert.deepEqual([...unexpected(alice), ...unexpected(bob)], []);
  });
});

describe('cluster mode with the media relay: a viewer served by the node it opened', () => {
  const room = `relay-${randomBytes(4).toString('hex')}`;
  const relay = ['--relay-addr', '127.0.0.1:0', '--cluster-secret', 'the secret of this test cluster'];
  let a;
  let b;
  let alice;
  let bob;

  before(async () => {
    const redis = await startRedis();
    [a, b, alice, bob] = await Promise.all([
      startNode(redis.url, 'a', relay),
      startNode(redis.url, 'b', relay),
      launchParticipant('alice', { speaks: true }),
      launchParticipant('bob'),
    ]);
  }, { timeout: 60_000 });

  after(async () => {
    await Promise.all([alice, bob].filter(Boolean).map(closeParticipant));
    killAll();
  }, { timeout: 30_000 });

  it("bob opens the demo as a viewer on node b: served there, he decodes alice's video from node a", { timeout: 2 * JOIN_MS + 10_000 }, async () => {
    await alice.page.goto(callUrl(a.base, room, 'alice'), { waitUntil: 'load' });
    await waitUntil(alice, 'joined on node a', connected, null, { timeout: JOIN_MS });
    let redirected = false;
    bob.page.on('console', (m) => { if (m.text().includes('hosted by another server')) redirected = true; });
    await bob.page.goto(callUrl(b.base, room, 'bob', { role: 'viewer' }), { waitUntil: 'load' });
    await waitUntil(bob, 'alice\'s tile with playing video', playingTiles, 1, { timeout: JOIN_MS, describe: describeTiles });
    assert.equal(redirected, false, 'bob stayed on node b');
    assert.equal(await gauge(b.base, 'sfu_participants'), 1, 'node b serves bob');
    const relayed = await gauge(b.base, 'sfu_relay_packets_received_total');
    assert.ok(relayed > 0, `the video came over the relay: ${relayed} packets`);
    assert.equal(await gauge(b.base, 'sfu_relay_packets_refused_total'), 0);
  });

  it('bob sees alice speaking and her chat message', { timeout: 2 * JOIN_MS + 5_000 }, async () => {
    await waitUntil(bob, 'highlights alice as speaking', ([name]) => {
      const tile = [...document.querySelectorAll('[data-testid="tile"]')]
        .find((t) => t.querySelector('.tile-name')?.textContent === name);
      return tile?.classList.contains('speaking') === true;
    }, ['alice'], { timeout: JOIN_MS, describe: describeTiles });
    const text = `hello node b ${randomBytes(3).toString('hex')}`;
    await alice.page.fill('#chat-input', text);
    await alice.page.press('#chat-input', 'Enter');
    await waitUntil(bob, `shows "${text}" from alice`,
      ([body]) => [...document.querySelectorAll('#chat-log li')]
        .some((li) => li.querySelector('.chat-from')?.textContent === 'alice' && li.querySelector('.chat-text')?.textContent === body),
      [text], { timeout: JOIN_MS });
  });

  it('bob joins again on node b as a participant: served there, alice on node a sees his video and he hers', { timeout: 2 * JOIN_MS + 10_000 }, async () => {
    let redirected = false;
    bob.page.on('console', (m) => { if (m.text().includes('hosted by another server')) redirected = true; });
    await bob.page.goto(callUrl(b.base, room, 'bob'), { waitUntil: 'load' });
    await Promise.all([alice, bob].map((p) => waitUntil(p, 'the other\'s tile with playing video', playingTiles, 1,
      { timeout: JOIN_MS, describe: describeTiles })));
    assert.equal(redirected, false, 'bob stayed on node b');
    assert.equal(await gauge(b.base, 'sfu_participants'), 1, 'node b serves bob');
    assert.equal(await gauge(a.base, 'sfu_participants'), 1, 'node a serves alice');
  });

  it('no console errors in either page', () => {
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  });
});
