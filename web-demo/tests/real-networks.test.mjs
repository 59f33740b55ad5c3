// Calls across real network shapes. One participant's Chromium sits in a network namespace
// behind a router namespace (host <-> router <-> client); the other is on the host. The
// router forwards plainly, or translates addresses like a home router (nftables masquerade:
// port-restricted cone) or a carrier-grade one (masquerade fully-random: symmetric), or drops
// all UDP; the client may have IPv6 only. In each case both participants must decode each
// other's video, and the client's selected ICE candidate pair (from getStats) must be what
// the network allows: UDP where UDP passes, ICE-TCP where it does not, a TURN relay when
// ICE-TCP is off too. Also: the demo over HTTPS from a non-loopback address with a
// self-signed certificate (camera and WSS work without any flag that fakes a secure context),
// and a WHIP client that finds its TURN relay in the Link headers.
//
// Needs root for the namespaces; coturn (turnserver) for the relay cases. Skipped, saying
// why, where either is missing.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  ARTIFACTS, CHROMIUM_BIN, SERVER_BIN, startServer, stopServer, startWatchdog, launchParticipant, closeParticipant,
  callUrl, waitUntil, describeTiles, withTimeout, sleep, sampleRemoteMedia,
} from './harness.mjs';
import * as netns from './netns.mjs';

const TOTAL_BUDGET_MS = 420_000;
const CALL_MS = 30_000;
const skip = netns.unsupportedReason();
const stopWatchdog = startWatchdog(TOTAL_BUDGET_MS);
after(() => stopWatchdog());

/** What each case measured, written to artifacts/real-networks.json. */
const figures = {};

// ---------------------------------------------------------------------------------------------
// In-page probes.
// ---------------------------------------------------------------------------------------------

/** The selected candidate pair of the publish and subscribe connections. */
function selectedPairs() {
  const describe = async (pc) => {
    if (!pc) return null;
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
    });
    if (!pair) {
      stats.forEach((r) => {
        if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') pair = r;
      });
    }
    if (!pair) return null;
    const side = (id) => {
      const c = stats.get(id) ?? {};
      return { type: c.candidateType, protocol: c.protocol, address: c.address, port: c.port, relayProtocol: c.relayProtocol ?? null };
    };
    return { local: side(pair.localCandidateId), remote: side(pair.remoteCandidateId), rtt: pair.currentRoundTripTime ?? null };
  };
  const { state } = window.sfuDemo;
  return Promise.all([describe(state.pubPc), describe(state.subPc)])
    .then(([publish, subscribe]) => ({ publish, subscribe, connectMs: { ...state.connectMs } }));
}

// ---------------------------------------------------------------------------------------------

/** In-page: gathers with only `iceServers` (relay candidates only); reports the relay
 * candidates and the candidate errors (a TURN server refusing credentials answers 401). */
function gatherRelay(iceServers) {
  return (async () => {
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
    const relays = [];
    const errors = [];
    pc.addEventListener('icecandidate', (e) => {
      if (e.candidate?.type === 'relay') relays.push(e.candidate.candidate);
    });
    pc.addEventListener('icecandidateerror', (e) => errors.push({ code: e.errorCode, text: e.errorText }));
    pc.createDataChannel('probe');
    await pc.setLocalDescription(await pc.createOffer());
    const deadline = Date.now() + 10_000;
    while (pc.iceGatheringState !== 'complete' && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    pc.close();
    return { relays, errors };
  })();
}

/** In-page: publishes camera and microphone over WHIP to `url` with `token`, taking its ICE
 * servers from the Link headers of an OPTIONS request (RFC 9725), as a WHIP client does. */
function whipPublish({ url, token }) {
  return (async () => {
    const auth = { Authorization: `Bearer ${token}` };
    const options = await fetch(url, { method: 'OPTIONS', headers: auth });
    const iceServers = [];
    for (const link of (options.headers.get('link') ?? '').split(/,\s*(?=<)/).filter(Boolean)) {
      const target = /^<([^>]+)>/.exec(link)?.[1];
      const param = (name) => new RegExp(`${name}="([^"]*)"`).exec(link)?.[1];
      if (target && /rel="ice-server"/.test(link)) {
        iceServers.push({ urls: [target], username: param('username'), credential: param('credential') });
      }
    }
    const pc = new RTCPeerConnection({ iceServers });
    window.whipPc = pc;
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360 } });
    for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly' });
    await pc.setLocalDescription(await pc.createOffer());
    const deadline = Date.now() + 10_000;
    while (pc.iceGatheringState !== 'complete' && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const res = await fetch(url, {
      method: 'POST', headers: { ...auth, 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp,
    });
    if (res.status !== 201) throw new Error(`WHIP POST: ${res.status} ${await res.text()}`);
    await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
    return { iceServers: iceServers.length, location: res.headers.get('location') };
  })();
}

/** In-page: the WHIP connection's state and selected pair. */
function whipState() {
  return (async () => {
    const pc = window.whipPc;
    if (!pc) return null;
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
    });
    const local = pair && stats.get(pair.localCandidateId);
    return { state: pc.connectionState, local: local && { type: local.candidateType, protocol: local.protocol, relayProtocol: local.relayProtocol ?? null } };
  })();
}

/**
 * coturn on `ip` with a shared secret (TURN REST), TCP and UDP on one free port, relaying
 * from `ip`. Stopped by PID.
 */
async function startCoturn(ip, secret) {
  const port = await freePort(ip);
  const relayBase = 40_000 + 2 * (randomBytes(2).readUInt16BE() % 10_000);
  const child = spawn('turnserver', [
    '-n', `--listening-ip=${ip}`, `--listening-port=${port}`, `--relay-ip=${ip}`,
    `--min-port=${relayBase}`, `--max-port=${relayBase + 200}`,
    '--use-auth-secret', `--static-auth-secret=${secret}`, '--realm=sfu.test', '--fingerprint',
    '--no-tls', '--no-dtls', '--no-cli', '--no-multicast-peers', '--log-file=stdout', '--simple-log',
    // As the README advises: the relay reaches the SFU (on `ip`) and nothing else.
    '--denied-peer-ip=0.0.0.0-255.255.255.255', `--allowed-peer-ip=${ip}`,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = [];
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding('utf8');
    stream.on('data', (d) => { log.push(d); if (log.length > 200) log.shift(); });
  }
  const exited = new Promise((resolve) => child.once('exit', resolve));
  // Up once it accepts TCP connections on its port.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise((resolve) => {
      const socket = createConnection({ host: ip, port }, () => { socket.destroy(); resolve(true); });
      socket.once('error', () => resolve(false));
    });
    if (up) break;
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`coturn did not start:\n${log.join('')}`);
    await sleep(100);
  }
  return {
    port,
    log: () => log.join(''),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        try { process.kill(child.pid, 'SIGTERM'); } catch { /* gone */ }
        await withTimeout(exited, 5_000, 'coturn exit').catch(() => {
          try { process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ }
        });
      }
    },
  };
}

/** TURN REST credentials (`EXPIRY:ID`, base64 HMAC-SHA1), as the server mints them. */
function turnCredentials(secret, id, expiry) {
  const username = `${expiry}:${id}`;
  return { username, credential: createHmac('sha1', secret).update(username).digest('base64') };
}

/** A free TCP port on `host`. */
function freePort(host) {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** The other's video plays at each participant (frames decoded advance). */
async function assertBothWays(a, b) {
  for (const [viewer, other] of [[a, b], [b, a]]) {
    await waitUntil(viewer, `${other.name}'s video plays`,
      () => [...document.querySelectorAll('[data-testid="tile"] video')].some((v) => v.videoWidth > 0),
      null, { timeout: CALL_MS, describe: describeTiles });
  }
  const [sa, sb] = await Promise.all([sampleRemoteMedia(a), sampleRemoteMedia(b)]);
  for (const [viewer, samples] of [[a, sa], [b, sb]]) {
    assert.equal(samples.length, 1, `${viewer.name} sees one other participant: ${JSON.stringify(samples)}`);
    const [tile] = samples;
    assert.ok(tile.second.framesDecoded > tile.first.framesDecoded, `${viewer.name} decodes video: ${JSON.stringify(tile)}`);
    assert.ok(tile.second.audioPackets > tile.first.audioPackets, `${viewer.name} receives audio: ${JSON.stringify(tile)}`);
  }
}

/**
 * One call: a server on `serverHost` with `serverArgs`, the client in `ns` (through its
 * router), and a participant on the host. Returns the client's selected candidate pairs.
 */
async function callThrough(label, ns, { serverHost, serverArgs = [], scratch, secure = false, extraClientArgs = [], urlFor }) {
  const room = `${label}-${randomBytes(3).toString('hex')}`;
  const base = await startServer(serverArgs, { host: serverHost });
  const origin = new URL(base).origin;
  const insecure = secure ? [] : [`--unsafely-treat-insecure-origin-as-secure=${origin}`];
  const clientBin = await netns.wrapperIn(ns, CHROMIUM_BIN, scratch);
  let client;
  let host;
  try {
    [client, host] = await Promise.all([
      launchParticipant(`client-${label}`, { executablePath: clientBin, args: [...insecure, ...extraClientArgs] }),
      launchParticipant(`host-${label}`, { args: [...insecure, ...extraClientArgs] }),
    ]);
    const started = Date.now();
    const url = (p) => (urlFor ? urlFor(base, room, p.name) : callUrl(base, room, p.name));
    await Promise.all([client, host].map((p) => p.page.goto(url(p), { waitUntil: 'load' })));
    await assertBothWays(client, host);
    const callMs = Date.now() - started;
    const pairs = await withTimeout(client.page.evaluate(selectedPairs), 5_000, 'reading the selected pairs');
    figures[label] = { ...pairs, callMs };
    return { pairs, client, host, base };
  } finally {
    await Promise.all([client, host].map(closeParticipant));
    await stopServer();
  }
}

/** The networks, all made before any browser starts (see netns.quietHostSide). */
const TOPOLOGIES = {
  direct: ['d', 0, {}],
  cone: ['c', 1, { nat: 'cone' }],
  symmetric: ['s', 2, { nat: 'symmetric' }],
  noUdp: ['t', 3, { nat: 'cone', blockUdp: true }],
  relayed: ['u', 4, { nat: 'cone', blockUdp: true }],
  https: ['h', 5, {}],
  ipv6: ['6', 6, { ipv6: true, v4: false }],
};

describe('calls across real networks', { skip: skip ?? false }, () => {
  const subnet = 1 + (randomBytes(1)[0] % 250);
  let scratch;
  const made = [];
  const nets = {};
  const client = (name) => nets[name];

  before(async () => {
    scratch = await mkdtemp(path.join(tmpdir(), 'sfu-realnet-'));
    for (const [name, [label, index, options]] of Object.entries(TOPOLOGIES)) {
      nets[name] = netns.createRoutedClient(label, subnet, index, options);
      made.push(nets[name]);
    }
    // Let the interfaces settle before the first browser starts.
    await sleep(2_000);
  });

  after(async () => {
    for (const ns of made) netns.remove(ns);
    if (scratch) await rm(scratch, { recursive: true, force: true });
    await mkdir(ARTIFACTS, { recursive: true });
    await writeFile(path.join(ARTIFACTS, 'real-networks.json'), `${JSON.stringify(figures, null, 2)}\n`);
    console.log(`real-networks figures: ${JSON.stringify(figures)}`);
  });

  it('direct (routed, no translation): UDP host candidates', { timeout: 60_000 }, async () => {
    const ns = client('direct');
    const { pairs } = await callThrough('direct', ns, { serverHost: ns.hostIp, scratch });
    for (const pair of [pairs.publish, pairs.subscribe]) {
      assert.equal(pair?.local.protocol, 'udp', JSON.stringify(pairs));
      assert.equal(pair.local.address, ns.nsIp, `the client's own address: ${JSON.stringify(pairs)}`);
    }
  });

  it('behind a port-restricted cone NAT (masquerade): UDP, peer-reflexive at the server', { timeout: 60_000 }, async () => {
    const ns = client('cone');
    const { pairs } = await callThrough('coneNat', ns, { serverHost: ns.hostIp, scratch });
    for (const pair of [pairs.publish, pairs.subscribe]) {
      assert.equal(pair?.local.protocol, 'udp', JSON.stringify(pairs));
      assert.equal(pair.remote.address, ns.hostIp, `the server's advertised address: ${JSON.stringify(pairs)}`);
    }
  });

  it('behind a symmetric NAT (masquerade fully-random): UDP', { timeout: 60_000 }, async () => {
    const ns = client('symmetric');
    const { pairs } = await callThrough('symmetricNat', ns, { serverHost: ns.hostIp, scratch });
    for (const pair of [pairs.publish, pairs.subscribe]) {
      assert.equal(pair?.local.protocol, 'udp', JSON.stringify(pairs));
    }
  });

  it('all UDP dropped by the router: ICE over TCP', { timeout: 60_000 }, async () => {
    const ns = client('noUdp');
    const { pairs } = await callThrough('iceTcp', ns, { serverHost: ns.hostIp, scratch });
    for (const pair of [pairs.publish, pairs.subscribe]) {
      assert.equal(pair?.local.protocol, 'tcp', JSON.stringify(pairs));
      assert.equal(pair.remote.protocol, 'tcp', JSON.stringify(pairs));
    }
  });

  describe('through a TURN relay (coturn)', { skip: netns.have('turnserver') ? false : 'coturn is not installed (apt-get install coturn)' }, () => {
    const secret = randomBytes(12).toString('hex');
    let ns;
    let coturn;

    before(async () => {
      ns = client('relayed');
      coturn = await startCoturn(ns.hostIp, secret);
    });
    after(async () => coturn?.stop());

    it('UDP dropped and ICE-TCP off: TURN over TCP, candidate type relay', { timeout: 60_000 }, async () => {
      const relay = `turn:${ns.hostIp}:${coturn.port}?transport=tcp`;
      const { pairs } = await callThrough('turnTcp', ns, {
        serverHost: ns.hostIp, scratch,
        serverArgs: ['--ice-tcp-port', '0', '--turn-server', relay, '--turn-secret', secret],
      }).catch((err) => { throw new Error(`${err.message}\ncoturn:\n${coturn.log().slice(-2000)}`); });
      for (const pair of [pairs.publish, pairs.subscribe]) {
        assert.equal(pair?.local.type, 'relay', JSON.stringify(pairs));
        assert.equal(pair.local.relayProtocol, 'tcp', JSON.stringify(pairs));
      }
    });

    it('media that cannot get through (UDP blocked, ICE-TCP off, TURN over UDP only) is explained after a retry, not retried forever', { timeout: 100_000 }, async () => {
      const relay = `turn:${ns.hostIp}:${coturn.port}?transport=udp`;
      const base = await startServer(['--ice-tcp-port', '0', '--turn-server', relay, '--turn-secret', secret], { host: ns.hostIp });
      const insecure = [`--unsafely-treat-insecure-origin-as-secure=${new URL(base).origin}`];
      let blocked;
      try {
        blocked = await launchParticipant('blocked', { executablePath: await netns.wrapperIn(ns, CHROMIUM_BIN, scratch), args: insecure });
        const started = Date.now();
        await blocked.page.goto(callUrl(base, `blocked-${randomBytes(3).toString('hex')}`, 'blocked'), { waitUntil: 'load' });
        await waitUntil(blocked, 'the page says the network blocks the media',
          () => /block the media/.test(document.getElementById('banner')?.textContent ?? ''), null, { timeout: 75_000 });
        const banner = await blocked.page.evaluate(() => document.getElementById('banner').textContent);
        figures.mediaBlocked = { banner, ms: Date.now() - started };
        assert.match(banner, /tried UDP and the TURN relay/);
        assert.equal(await blocked.page.isVisible('#join-view'), true, 'back on the join screen, not reconnecting');
      } finally {
        await closeParticipant(blocked);
        await stopServer();
      }
    });

    it('coturn refuses expired credentials and accepts fresh ones', { timeout: 60_000 }, async () => {
      const browser = await launchParticipant('turn-probe', { executablePath: await netns.wrapperIn(ns, CHROMIUM_BIN, scratch) });
      try {
        const urls = [`turn:${ns.hostIp}:${coturn.port}?transport=tcp`];
        const now = Math.floor(Date.now() / 1000);
        const fresh = await browser.page.evaluate(gatherRelay, [{ urls, ...turnCredentials(secret, 'probe', now + 600) }]);
        const expired = await browser.page.evaluate(gatherRelay, [{ urls, ...turnCredentials(secret, 'probe', now - 60) }]);
        figures.turnCredentials = { fresh, expired };
        assert.ok(fresh.relays.length > 0, `fresh credentials give a relay candidate: ${JSON.stringify(fresh)}`);
        assert.equal(expired.relays.length, 0, `expired credentials give none: ${JSON.stringify(expired)}`);
        assert.ok(expired.errors.some((e) => e.code === 401), `coturn answers 401: ${JSON.stringify(expired)}`);
      } finally {
        await closeParticipant(browser);
      }
    });

    it('a WHIP client finds the relay in the Link headers and publishes through it', { timeout: 60_000 }, async () => {
      const relay = `turn:${ns.hostIp}:${coturn.port}?transport=tcp`;
      const room = `whip-${randomBytes(3).toString('hex')}`;
      const base = await startServer(['--ice-tcp-port', '0', '--turn-server', relay, '--turn-secret', secret], { host: ns.hostIp });
      const origin = new URL(base).origin;
      const insecure = [`--unsafely-treat-insecure-origin-as-secure=${origin}`];
      let publisher;
      let viewer;
      try {
        [publisher, viewer] = await Promise.all([
          launchParticipant('whip-client', { executablePath: await netns.wrapperIn(ns, CHROMIUM_BIN, scratch), args: insecure }),
          launchParticipant('whip-viewer', { args: insecure }),
        ]);
        await publisher.page.goto(base, { waitUntil: 'load' });
        const { token } = await publisher.page.evaluate(async (r) => (await fetch(`/dev/token?room=${r}&identity=whip`)).json(), room);
        const published = await publisher.page.evaluate(whipPublish, { url: `${origin}/whip/${room}`, token });
        assert.ok(published.iceServers > 0, `ICE servers from the Link headers: ${JSON.stringify(published)}`);
        await viewer.page.goto(callUrl(base, room, 'viewer', { role: 'viewer' }), { waitUntil: 'load' });
        await waitUntil(viewer, 'the WHIP publisher\'s video plays', () => document.querySelector('[data-testid="tile"] video')?.videoWidth > 0,
          null, { timeout: CALL_MS, describe: describeTiles });
        const [tile] = await sampleRemoteMedia(viewer);
        assert.ok(tile.second.framesDecoded > tile.first.framesDecoded, `video advances: ${JSON.stringify(tile)}`);
        const whip = await publisher.page.evaluate(whipState);
        figures.whipThroughTurn = whip;
        assert.equal(whip.local?.type, 'relay', JSON.stringify(whip));
      } finally {
        await Promise.all([publisher, viewer].map(closeParticipant));
        await stopServer();
      }
    });
  });

  it('HTTPS from a non-loopback address (self-signed), signed in by a token link: camera, WSS and the call work', { timeout: 60_000 }, async () => {
    const ns = client('https');
    // A production key: no /dev/token, so the demo must take the token from the link.
    const [key, secret] = ['prod', randomBytes(16).toString('hex')];
    const link = (base, room, name) => {
      const out = execFileSync(SERVER_BIN, ['token', '--api-key', key, '--api-secret', secret, '--identity', name,
        '--name', name, '--room', room, '--join-url', `${base}?autojoin=1`], { encoding: 'utf8' }).trim();
      assert.match(out, /^https:\/\/.*\?autojoin=1#token=ey/);
      return out;
    };
    const { base, pairs } = await callThrough('https', ns, {
      serverHost: ns.hostIp, scratch, secure: true,
      serverArgs: ['--tls-self-signed', '--tls-name', ns.hostIp, '--api-key', `${key}:${secret}`, '--auto-create-rooms', 'true'],
      extraClientArgs: ['--ignore-certificate-errors'],
      urlFor: link,
    });
    assert.match(base, /^https:/);
    assert.ok(pairs.publish, 'the camera was published (a secure context without any flag faking one)');
  });

  it('a multi-homed dual-stack server (media on ::, an address on each network): an IPv4 and an IPv6-only client call each other', { timeout: 60_000 }, async () => {
    const v4 = client('direct');
    const v6 = client('ipv6');
    const advertised = [v4.hostIp, client('cone').hostIp, v6.hostIp6];
    const base = await startServer(['--advertise-ip', advertised.join(',')], { host: '::' });
    const port = new URL(base).port;
    const pageFor = (ip) => `http://${ip.includes(':') ? `[${ip}]` : ip}:${port}/`;
    const room = `multi-${randomBytes(3).toString('hex')}`;
    let a;
    let b;
    try {
      [a, b] = await Promise.all([
        launchParticipant('multi-v4', { executablePath: await netns.wrapperIn(v4, CHROMIUM_BIN, scratch),
          args: [`--unsafely-treat-insecure-origin-as-secure=${pageFor(v4.hostIp).slice(0, -1)}`] }),
        launchParticipant('multi-v6', { executablePath: await netns.wrapperIn(v6, CHROMIUM_BIN, scratch),
          args: [`--unsafely-treat-insecure-origin-as-secure=${pageFor(v6.hostIp6).slice(0, -1)}`] }),
      ]);
      await a.page.goto(callUrl(pageFor(v4.hostIp), room, a.name), { waitUntil: 'load' });
      await b.page.goto(callUrl(pageFor(v6.hostIp6), room, b.name), { waitUntil: 'load' });
      await assertBothWays(a, b);
      const [pa, pb] = await Promise.all([a, b].map((p) => withTimeout(p.page.evaluate(selectedPairs), 5_000, 'pairs')));
      figures.multiHomed = { v4: pa, v6: pb };
      // Each reached one of the server's IPv4 addresses (either is routed to it) or its IPv6
      // one, and got its answers from that same address (or ICE would not have succeeded).
      for (const pair of [pa.publish, pa.subscribe]) assert.ok(advertised.slice(0, 2).includes(pair?.remote.address), JSON.stringify(pa));
      for (const pair of [pb.publish, pb.subscribe]) assert.equal(pair?.remote.address, v6.hostIp6, JSON.stringify(pb));
    } finally {
      await Promise.all([a, b].map(closeParticipant));
      await stopServer();
    }
  });

  it('an IPv6-only client', { timeout: 60_000 }, async () => {
    const ns = client('ipv6');
    const { pairs } = await callThrough('ipv6', ns, { serverHost: ns.hostIp6, scratch });
    for (const pair of [pairs.publish, pairs.subscribe]) {
      assert.equal(pair?.local.address, ns.nsIp6, JSON.stringify(pairs));
      assert.equal(pair.remote.address, ns.hostIp6, JSON.stringify(pairs));
    }
  });
});

if (skip) console.log(`skipping the real-network tests: ${skip}`);
