// Network namespaces for the browser tests: a browser put behind its own veth link, whose
// bandwidth (`tc tbf`) and loss (nftables `numgen random`) the test controls. Addresses come
// from 198.18.0.0/15 (reserved for benchmarks). Needs root, iproute2 and nftables; every
// namespace made here is deleted by `remove()` (and by the process exit hook).

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';

const COMMAND_MS = 10_000;
/** Namespaces made here, by name. */
const made = new Map();

function run(cmd, args) {
  return execFileSync(cmd, args, { timeout: COMMAND_MS, stdio: ['ignore', 'pipe', 'pipe'] }).toString();
}

/** Why namespaces cannot be used here, or `null` if they can. */
export function unsupportedReason() {
  if (process.getuid?.() !== 0) return 'network-namespace tests need root';
  for (const tool of ['ip', 'tc', 'nft']) {
    try {
      run('sh', ['-c', `command -v ${tool}`]);
    } catch {
      return `${tool} is not installed (apt-get install iproute2 nftables)`;
    }
  }
  const probe = `sfu-probe-${randomBytes(3).toString('hex')}`;
  try {
    run('ip', ['netns', 'add', probe]);
  } catch (err) {
    return `the kernel refuses network namespaces: ${err.stderr?.toString().trim() || err.message}`;
  } finally {
    try { run('ip', ['netns', 'del', probe]); } catch { /* was not made */ }
  }
  return null;
}

/**
 * A namespace linked to the host by a veth pair on subnet `198.18.<subnet>.<4k>/30`: the host
 * side gets `.4k+1`, the namespace side `.4k+2`, with a default route through the host.
 * Returns {name, hostIf, hostIp, nsIp}.
 */
export function createNamespace(label, subnet, index) {
  const tag = randomBytes(3).toString('hex');
  const name = `sfu-${label}-${tag}`;
  const hostIf = `sfh${index}${tag}`;
  const nsIf = `sfn${index}${tag}`;
  const base = 4 * index;
  const hostIp = `198.18.${subnet}.${base + 1}`;
  const nsIp = `198.18.${subnet}.${base + 2}`;
  run('ip', ['netns', 'add', name]);
  made.set(name, { name, hostIf });
  run('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf]);
  run('ip', ['link', 'set', nsIf, 'netns', name]);
  run('ip', ['addr', 'add', `${hostIp}/30`, 'dev', hostIf]);
  run('ip', ['link', 'set', hostIf, 'up']);
  const inside = (args) => run('ip', ['netns', 'exec', name, ...args]);
  inside(['ip', 'link', 'set', 'lo', 'up']);
  inside(['ip', 'addr', 'add', `${nsIp}/30`, 'dev', nsIf]);
  inside(['ip', 'link', 'set', nsIf, 'up']);
  inside(['ip', 'route', 'add', 'default', 'via', hostIp]);
  return { name, hostIf, hostIp, nsIp };
}

/** A shell script that runs `binary` with its arguments inside namespace `ns`. */
export async function wrapperIn(ns, binary, dir) {
  const file = path.join(dir, `in-${ns.name}.sh`);
  await writeFile(file, `#!/bin/sh\nexec ip netns exec ${ns.name} ${binary} "$@"\n`);
  await chmod(file, 0o755);
  return file;
}

/** Limits what the host sends into the namespace (its downlink) to `kbit` kbit/s. */
export function limitDownlink(ns, kbit) {
  run('tc', ['qdisc', 'replace', 'dev', ns.hostIf, 'root', 'tbf', 'rate', `${kbit}kbit`, 'burst', '4kb', 'latency', '100ms']);
}

/** Lifts the downlink limit. */
export function clearDownlink(ns) {
  run('tc', ['qdisc', 'del', 'dev', ns.hostIf, 'root']);
}

/**
 * Drops `percent`% of the UDP packets on the namespace's `downlink` (host to namespace) or
 * `uplink` (namespace to host), at random. Signalling (TCP) is untouched. Packets are dropped
 * where they arrive (input hook): dropped on output, the sender would see EPERM rather than a
 * loss on the wire.
 */
export function setLoss(ns, direction, percent) {
  const rule = ['meta', 'l4proto', 'udp', 'numgen', 'random', 'mod', '100', '<', String(percent), 'drop'];
  if (direction === 'downlink') {
    nft(ns.name, ['add', 'table', 'inet', 'sfuloss']);
    nft(ns.name, ['add', 'chain', 'inet', 'sfuloss', 'input', '{ type filter hook input priority 0 ; policy accept ; }']);
    nft(ns.name, ['add', 'rule', 'inet', 'sfuloss', 'input', ...rule]);
  } else {
    const table = hostTable(ns);
    nft(null, ['add', 'table', 'ip', table]);
    nft(null, ['add', 'chain', 'ip', table, 'input', '{ type filter hook input priority 0 ; policy accept ; }']);
    nft(null, ['add', 'rule', 'ip', table, 'input', 'ip', 'saddr', ns.nsIp, ...rule]);
  }
}

/** Removes the namespace's loss rules (both directions). */
export function clearLoss(ns) {
  try { nft(ns.name, ['delete', 'table', 'inet', 'sfuloss']); } catch { /* none */ }
  try { nft(null, ['delete', 'table', 'ip', hostTable(ns)]); } catch { /* none */ }
}

/** The host's nftables table for a namespace's uplink loss. */
const hostTable = (ns) => `sfuloss_${ns.hostIf}`;

/** Runs nft in namespace `name` (or on the host for `null`). */
function nft(name, args) {
  return name ? run('ip', ['netns', 'exec', name, 'nft', ...args]) : run('nft', args);
}

/** Deletes the namespace (and with it its veth pair, limits and rules). */
export function remove(ns) {
  if (!ns || !made.has(ns.name)) return;
  clearLoss(ns);
  try {
    run('ip', ['netns', 'del', ns.name]);
  } catch { /* already gone */ }
  try {
    run('ip', ['link', 'del', ns.hostIf]);
  } catch { /* went with the namespace */ }
  made.delete(ns.name);
}

process.on('exit', () => {
  for (const ns of [...made.values()]) remove(ns);
});
