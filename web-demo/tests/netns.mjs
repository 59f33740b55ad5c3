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
  quietHostSide(hostIf, false);
  run('ip', ['addr', 'add', `${hostIp}/30`, 'dev', hostIf]);
  run('ip', ['link', 'set', hostIf, 'up']);
  const inside = (args) => run('ip', ['netns', 'exec', name, ...args]);
  quietSide(inside, nsIf, false);
  inside(['ip', 'link', 'set', 'lo', 'up']);
  inside(['ip', 'addr', 'add', `${nsIp}/30`, 'dev', nsIf]);
  inside(['ip', 'link', 'set', nsIf, 'up']);
  inside(['ip', 'route', 'add', 'default', 'via', hostIp]);
  return { name, hostIf, hostIp, nsIp };
}

/**
 * A client namespace behind a router namespace: host <-> router <-> client. The router can
 * translate addresses (`nat`: 'cone' = nftables masquerade, which keeps the source port and
 * drops unsolicited packets; 'symmetric' = masquerade fully-random, a new port per
 * destination), drop all UDP it forwards (`blockUdp`), and route IPv6 (`ipv6`; with `v4:
 * false` the client has IPv6 only). Addresses: 198.18.<subnet>.<4i+1|2> between host and
 * router, 198.19.<subnet>.<4i+1|2> between router and client, 2001:db8:<subnet>:<2i|2i+1>::1|2
 * for IPv6. Without NAT the host routes the client's networks through the router. Returns
 * {name, router, hostIf, hostIp, hostIp6, nsIp, nsIp6}; `remove()` takes it all down.
 */
export function createRoutedClient(label, subnet, index, { nat = 'none', blockUdp = false, ipv6 = false, v4 = true } = {}) {
  const tag = randomBytes(3).toString('hex');
  const router = `sfu-r${label}-${tag}`;
  const name = `sfu-c${label}-${tag}`;
  const hostIf = `srh${index}${tag}`;
  const upIf = `sru${index}${tag}`;
  const downIf = `srd${index}${tag}`;
  const clientIf = `src${index}${tag}`;
  const base = 4 * index;
  const hex = subnet.toString(16);
  const v4net = { host: `198.18.${subnet}.${base + 1}`, up: `198.18.${subnet}.${base + 2}`, down: `198.19.${subnet}.${base + 1}`, client: `198.19.${subnet}.${base + 2}` };
  const v6net = { host: `2001:db8:${hex}:${2 * index}::1`, up: `2001:db8:${hex}:${2 * index}::2`, down: `2001:db8:${hex}:${2 * index + 1}::1`, client: `2001:db8:${hex}:${2 * index + 1}::2`, clientNet: `2001:db8:${hex}:${2 * index + 1}::/64` };
  const inR = (args) => run('ip', ['netns', 'exec', router, ...args]);
  const inC = (args) => run('ip', ['netns', 'exec', name, ...args]);
  run('ip', ['netns', 'add', router]);
  made.set(router, { name: router, hostIf });
  run('ip', ['netns', 'add', name]);
  made.set(name, { name, hostIf: null, hostRoutes: [] });
  run('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', upIf]);
  run('ip', ['link', 'set', upIf, 'netns', router]);
  quietHostSide(hostIf, ipv6);
  run('ip', ['link', 'set', hostIf, 'up']);
  inR(['ip', 'link', 'add', downIf, 'type', 'veth', 'peer', 'name', clientIf]);
  inR(['ip', 'link', 'set', clientIf, 'netns', name]);
  quietSide(inC, clientIf, ipv6);
  for (const [ns, ifs] of [[router, ['lo', upIf, downIf]], [name, ['lo', clientIf]]]) {
    for (const i of ifs) run('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', i, 'up']);
  }
  inR(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
  if (v4) {
    run('ip', ['addr', 'add', `${v4net.host}/30`, 'dev', hostIf]);
    inR(['ip', 'addr', 'add', `${v4net.up}/30`, 'dev', upIf]);
    inR(['ip', 'addr', 'add', `${v4net.down}/30`, 'dev', downIf]);
    inC(['ip', 'addr', 'add', `${v4net.client}/30`, 'dev', clientIf]);
    inR(['ip', 'route', 'add', 'default', 'via', v4net.host]);
    inC(['ip', 'route', 'add', 'default', 'via', v4net.down]);
  }
  if (ipv6) {
    inR(['sysctl', '-q', '-w', 'net.ipv6.conf.all.forwarding=1']);
    run('ip', ['-6', 'addr', 'add', `${v6net.host}/64`, 'dev', hostIf, 'nodad']);
    inR(['ip', '-6', 'addr', 'add', `${v6net.up}/64`, 'dev', upIf, 'nodad']);
    inR(['ip', '-6', 'addr', 'add', `${v6net.down}/64`, 'dev', downIf, 'nodad']);
    inC(['ip', '-6', 'addr', 'add', `${v6net.client}/64`, 'dev', clientIf, 'nodad']);
    inR(['ip', '-6', 'route', 'add', 'default', 'via', v6net.host]);
    inC(['ip', '-6', 'route', 'add', 'default', 'via', v6net.down]);
  }
  const hostRoutes = [];
  if (nat === 'none') {
    if (v4) hostRoutes.push(['198.19.' + subnet + '.' + base + '/30', v4net.up]);
    if (ipv6) hostRoutes.push([v6net.clientNet, v6net.up]);
    for (const [net, via] of hostRoutes) run('ip', ['route', 'add', net, 'via', via]);
  } else {
    const random = nat === 'symmetric' ? ' fully-random' : '';
    nft(router, ['-f', '-'], `table ip nat {\n chain post {\n  type nat hook postrouting priority 100;\n  oifname "${upIf}" masquerade${random}\n }\n}\n`);
  }
  if (blockUdp) {
    nft(router, ['-f', '-'], 'table inet block {\n chain forward_udp {\n  type filter hook forward priority 0; policy accept;\n  meta l4proto udp drop\n }\n}\n');
  }
  made.get(name).hostRoutes = hostRoutes;
  return { name, router, hostIf, hostIp: v4 ? v4net.host : null, hostIp6: ipv6 ? v6net.host : null, nsIp: v4 ? v4net.client : null, nsIp6: ipv6 ? v6net.client : null };
}

/**
 * Keeps a new host-side interface from changing the host's addresses later on its own: no
 * IPv6 at all unless asked for, and no automatic link-local address when IPv6 is wanted (the
 * test gives it a global one). A Chromium on the host aborts page loads with
 * ERR_NETWORK_CHANGED when an address appears while it loads.
 */
function quietHostSide(hostIf, ipv6) {
  quietSide((args) => run(args[0], args.slice(1)), hostIf, ipv6);
}

/**
 * The same for an interface a browser sees inside a namespace (`inNs(argv)` runs a command
 * there): its automatic IPv6 link-local address would appear a second after the link comes
 * up, possibly while the page loads.
 */
function quietSide(inNs, ifname, ipv6) {
  const sysctl = (key, value) => {
    try { inNs(['sysctl', '-q', '-w', `net.ipv6.conf.${ifname}.${key}=${value}`]); } catch { /* no IPv6 */ }
  };
  if (ipv6) sysctl('addr_gen_mode', 1);
  else sysctl('disable_ipv6', 1);
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

/**
 * Cuts the namespace off: every packet between it and the host is dropped where it arrives
 * (TCP and UDP alike), as when a client's network goes down. `restore` ends it.
 */
export function cutOff(ns) {
  nft(ns.name, ['add', 'table', 'inet', 'sfucut']);
  nft(ns.name, ['add', 'chain', 'inet', 'sfucut', 'input', '{ type filter hook input priority 0 ; policy accept ; }']);
  nft(ns.name, ['add', 'rule', 'inet', 'sfucut', 'input', 'iifname', '!=', 'lo', 'drop']);
  const table = `sfucut_${ns.hostIf}`;
  nft(null, ['add', 'table', 'ip', table]);
  nft(null, ['add', 'chain', 'ip', table, 'input', '{ type filter hook input priority 0 ; policy accept ; }']);
  nft(null, ['add', 'rule', 'ip', table, 'input', 'ip', 'saddr', ns.nsIp, 'drop']);
}

/** Ends a `cutOff`. */
export function restore(ns) {
  try { nft(ns.name, ['delete', 'table', 'inet', 'sfucut']); } catch { /* none */ }
  try { nft(null, ['delete', 'table', 'ip', `sfucut_${ns.hostIf}`]); } catch { /* none */ }
}

/** The host's nftables table for a namespace's uplink loss. */
const hostTable = (ns) => `sfuloss_${ns.hostIf}`;

/** Runs nft in namespace `name` (or on the host for `null`), with `input` on its stdin. */
function nft(name, args, input) {
  const cmd = name ? ['ip', ['netns', 'exec', name, 'nft', ...args]] : ['nft', args];
  if (input === undefined) return run(...cmd);
  return execFileSync(cmd[0], cmd[1], { timeout: COMMAND_MS, input, stdio: ['pipe', 'pipe', 'pipe'] }).toString();
}

/** Deletes the namespace (and with it its veth pair, limits and rules; for a routed client,
 * its router and the host's routes to it too). */
export function remove(ns) {
  if (!ns) return;
  for (const [net] of made.get(ns.name)?.hostRoutes ?? []) {
    try { run('ip', ['route', 'del', net]); } catch { /* already gone */ }
  }
  for (const name of [ns.name, ns.router].filter(Boolean)) {
    const entry = made.get(name);
    if (!entry) continue;
    if (entry.hostIf && name === ns.name) {
      clearLoss(ns);
      restore(ns);
    }
    try {
      run('ip', ['netns', 'del', name]);
    } catch { /* already gone */ }
    if (entry.hostIf) {
      try {
        run('ip', ['link', 'del', entry.hostIf]);
      } catch { /* went with the namespace */ }
    }
    made.delete(name);
  }
}

process.on('exit', () => {
  for (const ns of [...made.values()]) remove(ns);
});

/** Whether `tool` is on the PATH. */
export function have(tool) {
  try {
    run('sh', ['-c', `command -v ${tool}`]);
    return true;
  } catch {
    return false;
  }
}
