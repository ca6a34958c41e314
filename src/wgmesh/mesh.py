"""The mesh definition: ``inventories/<env>/mesh.yml``, network settings and nodes.

Every value passes the strict grammar of ``wgmesh.grammar`` as it is read: what reaches a
rendered file is a name, an address or a key that cannot carry anything else.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap

from wgmesh import grammar, limits
from wgmesh.errors import InputError
from wgmesh.grammar import IPAddr, IPNet
from wgmesh.yamlsource import Fields, YamlSource, join, type_name

LOCKFILE_SUFFIX = ".lock.yml"
DEFAULT_ROUTES = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))

NETWORK_DEFAULTS: dict[str, Any] = {
    "interface": "wg0",
    "listen_port": 51820,
    "ipv4_pool": "100.64.0.0/10",
    "ipv6_pool": "fd7a:115c:a1e0::/48",
    "domain": "mesh.internal",
    "mtu": 1420,
    "keepalive": 25,
    # Hop tunnels to relays: their UDP port on the relay, and the addresses inside them.
    "relay_port": 51821,
    "relay_pool": "fd7a:115c:a1e1::/64",
    # NAT traversal: the UDP port, on mesh addresses only, where the agents of lighthouses
    # and of nodes behind NAT talk (discovery answers and path probes).
    "agent_port": 51822,
    # Destinations a host keeps reaching through its own default gateway when it uses an exit
    # node: the Ansible controller or jump host, so the management path survives.
    "management_networks": [],
    # Keys older than this many days are reported, with a notice two weeks before (0: never).
    "key_max_age_days": 0,
    # Split DNS: domain -> the nameservers that answer it (say, one behind a subnet router).
    # Hosts the policy lets reach them (UDP 53) resolve the domain through them and keep
    # their own resolver for everything else.
    "split_dns": {},
    # SSH over the mesh follows the policy's ssh rules only on nodes that opt in (as with
    # `tailscale set --ssh`): the default for managed nodes; a node's ssh_policy overrides it.
    "ssh_policy": False,
    # Denied-flow logs: each host's monitor logs the packets the policy drops (headers only,
    # at most 10 a second per host), with their nodes, protocol and port.
    "log_denied": False,
}

NODE_KEYS = {
    "ansible_host", "owner", "tags", "address", "address6", "endpoint", "site", "lan_address",
    "advertise_routes", "approved_routes", "advertise_exit_node", "approved_exit_node",
    "use_exit_node", "relay", "managed", "public_key", "expires", "description", "listen_port",
    "route_snat", "failover_for", "lighthouse", "ssh_policy", "resolver",
}


@dataclass(frozen=True)
class Network:
    interface: str
    listen_port: int
    ipv4_pool: ipaddress.IPv4Network
    ipv6_pool: ipaddress.IPv6Network
    domain: str
    mtu: int
    keepalive: int
    relay_port: int
    relay_pool: ipaddress.IPv6Network
    agent_port: int = 51822
    management_networks: tuple[IPNet, ...] = ()
    key_max_age_days: int = 0
    split_dns: tuple[tuple[str, tuple[IPAddr, ...]], ...] = ()
    ssh_policy: bool = False
    log_denied: bool = False

    @property
    def hop_interface(self) -> str:
        """The relay tunnel's interface, beside the mesh interface."""
        return self.interface + grammar.HOP_SUFFIX


@dataclass(frozen=True)
class Node:
    name: str
    owner: str | None = None
    tags: tuple[str, ...] = ()
    ansible_host: str | None = None
    address: ipaddress.IPv4Address | None = None
    address6: ipaddress.IPv6Address | None = None
    endpoint: str | None = None
    site: str | None = None
    lan_address: IPAddr | None = None
    listen_port: int | None = None
    advertise_routes: tuple[IPNet, ...] = ()
    approved_routes: tuple[IPNet, ...] = ()
    advertise_exit_node: bool = False
    approved_exit_node: bool = False
    use_exit_node: str | None = None
    relay: bool = False
    # Tells nodes behind NAT which public address and port it sees for them and their peers,
    # so pairs behind NAT can punch a direct path (their agents do; see docs/relay.md).
    lighthouse: bool = False
    # Source-NAT routed traffic into the LAN (LAN hosts then need no route back to the mesh).
    route_snat: bool = True
    # This router backs up another for the same prefixes (only the primary is used by peers).
    failover_for: str | None = None
    # Its sshd and port 22 over the mesh follow the policy's ssh rules (docs/policy.md, SSH).
    ssh_policy: bool = False
    # Answers DNS on its mesh addresses (docs/routing.md, Names): every node's name, the split
    # domains it reaches, everything else from its own resolvers. Devices list it as DNS.
    resolver: bool = False
    managed: bool = True
    public_key: str | None = None
    expires: dt.date | None = None
    description: str = ""

    @property
    def tagged(self) -> bool:
        return bool(self.tags)


@dataclass(frozen=True)
class Signing:
    """Changes take effect on hosts only when ``threshold`` of ``admins`` (name, ed25519
    public key) signed the manifest of the inputs (src/wgmesh/signing.py)."""
    threshold: int
    admins: tuple[tuple[str, str], ...]
    manifest_path: Path


@dataclass
class Mesh:
    path: Path
    policy_path: Path | None
    network: Network
    nodes: dict[str, Node]
    source: YamlSource = field(repr=False)
    # Beside mesh.yml unless mesh.yml says otherwise (the lab keeps its own in lab state).
    lock_path: Path = field(default=Path("mesh.lock.yml"))
    signing: Signing | None = None

    def _positioned(self, section: str):
        """A top-level section of mesh.yml as read with positions (read again with them the
        first time an error needs one)."""
        if not isinstance(self.source.data, CommentedMap):
            self.source = YamlSource(self.path)
        return self.source.data.get(section)

    def where(self, node: str, key: str | None = None) -> tuple[int, int]:
        """Position of a node (or one of its keys) in mesh.yml, for errors."""
        nodes = self._positioned("nodes")
        return YamlSource.position(nodes, node) if key is None else \
            YamlSource.position(nodes[node], key)

    def where_network(self, key: str, sub: str) -> tuple[int, int]:
        """Position of network.<key>.<sub> in mesh.yml."""
        return YamlSource.position(self._positioned("network")[key], sub)


def resolve_path(path: str | Path) -> Path:
    path = Path(path)
    return path / "mesh.yml" if path.is_dir() else path


def load_mesh(path: str | Path) -> Mesh:
    """Load and check mesh.yml on its own (cross-checks with the policy come later).

    Read fast first; a file with problems is read again with positions for every problem."""
    path = resolve_path(path)
    try:
        return _load_mesh(path, YamlSource(path, fast=True))
    except InputError:
        return _load_mesh(path, YamlSource(path))


def _load_mesh(path: Path, src: YamlSource) -> Mesh:
    root = src.mapping(src.data, None, "",
                       allowed={"plugin", "policy", "lockfile", "network", "nodes", "signing"},
                       required={"nodes"})
    if root is None:
        src.check()
    if "plugin" in root and root["plugin"] not in ("wgmesh", "wgmesh.mesh.wgmesh"):
        src.error(root, "plugin", "plugin",
                  f'plugin must be "wgmesh" (or, from the collection, "wgmesh.mesh.wgmesh"), '
                  f'not {type_name(root["plugin"])}')
    policy_path = None
    if "policy" in root:
        if isinstance(root["policy"], str) and grammar.printable(root["policy"]) \
                and root["policy"]:
            policy_path = (path.parent / root["policy"]).resolve()
        else:
            src.error(root, "policy", "policy", "must be the path of a policy file",
                      "e.g. policy: ../../policies/prod.hujson (relative to mesh.yml)")
    lock_path = path.with_name("mesh" + LOCKFILE_SUFFIX)
    if "lockfile" in root:
        value = root["lockfile"]
        if isinstance(value, str) and grammar.printable(value) \
                and value.endswith(LOCKFILE_SUFFIX) and len(value) > len(LOCKFILE_SUFFIX):
            lock_path = path.parent / value
        else:
            # wgmesh rewrites the lockfile: it must not be pointed at another file.
            src.error(root, "lockfile", "lockfile",
                      f"must be the path of a file whose name ends in {LOCKFILE_SUFFIX}",
                      "omit it to keep mesh.lock.yml beside mesh.yml")
    network = _network(src, root)
    nodes = _nodes(src, root, network)
    signing = _signing(src, root, path) if "signing" in root else None
    src.check()
    return Mesh(path, policy_path, network, nodes, src, lock_path, signing)


def _signing(src: YamlSource, root: Any, path: Path) -> Signing | None:
    node = src.mapping(root, "signing", "signing", allowed={"threshold", "admins", "manifest"},
                       required={"threshold", "admins"})
    if node is None:
        return None
    f = Fields(src, node, "signing")
    admins = node.get("admins")
    found: dict[str, str] = {}
    if not isinstance(admins, dict) or not admins:
        f.bad("admins", "must map each admin's name to the public key `wgmesh admin keygen` "
              "printed", "e.g. admins: {alice: <44 characters>}")
    else:
        for name, key in admins.items():
            where = f"signing.admins.{name}"
            if not grammar.matches(grammar.NODE_NAME, name):
                src.error(admins, name, where, "is not an admin name",
                          "lower-case letters, digits and dashes, e.g. alice")
            elif not grammar.public_key(key):
                src.error(admins, name, where, "is not an ed25519 public key (44 characters "
                          "of base64)", "paste what `wgmesh admin keygen` printed")
            elif key in found.values():
                src.error(admins, name, where, "has the key of another admin",
                          "every admin signs with a key of their own")
            else:
                found[name] = key
    threshold = node.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not (
            1 <= threshold <= max(len(found), 1)):
        what = (str(threshold) if isinstance(threshold, int) and not isinstance(threshold, bool)
                else type_name(threshold))
        f.bad("threshold", f"must be a whole number from 1 to the number of admins "
              f"({len(found)}), not {what}", "the number of admins who must sign a change, e.g. 2")
        threshold = 1
    manifest = node.get("manifest", "manifest.json")
    # Inside the inventory folder: commands write the manifest there.
    if not (isinstance(manifest, str) and grammar.printable(manifest) and manifest
            and manifest.endswith(".json") and not manifest.startswith("/")
            and ".." not in manifest.split("/")):
        f.bad("manifest", "must be the path of a .json file inside the inventory folder",
              "omit it to keep manifest.json beside mesh.yml")
        manifest = "manifest.json"
    return Signing(threshold, tuple(sorted(found.items())), path.parent / manifest)


def _network(src: YamlSource, root: Any) -> Network:
    values = dict(NETWORK_DEFAULTS)
    node = root.get("network")
    if node is not None and src.mapping(root, "network", "network",
                                        allowed=set(NETWORK_DEFAULTS)) is not None:
        values.update(node)

    def at(key):
        return (node, key) if node is not None and key in node else (root, "network")

    out = dict(values)
    for key, (lo, hi) in (("listen_port", (1, 65535)), ("mtu", (1280, 9000)),
                          ("keepalive", (0, 3600)), ("relay_port", (1, 65535)),
                          ("agent_port", (1, 65535)),
                          ("key_max_age_days", (0, 3650))):
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            src.error(*at(key), f"network.{key}", f"must be a number from {lo} to {hi}, not "
                      + (str(v) if isinstance(v, int) and not isinstance(v, bool)
                         else type_name(v)))
    for key, fam, sizes in (("ipv4_pool", 4, (8, 30)), ("ipv6_pool", 6, (16, 120)),
                            ("relay_pool", 6, (16, 64))):
        out[key] = _pool(src, at(key), key, values[key], fam, sizes)
    if out["relay_pool"].overlaps(out["ipv6_pool"]):
        src.error(*at("relay_pool"), "network.relay_pool",
                  f"{out['relay_pool']} overlaps ipv6_pool {out['ipv6_pool']}",
                  "use a /64 (or larger) outside ipv6_pool, e.g. fd7a:115c:a1e1::/64")
    out["management_networks"] = _management_networks(src, values, at, out)
    out["split_dns"] = _split_dns(src, values, at, node)
    for key in ("ssh_policy", "log_denied"):
        if not isinstance(values[key], bool):
            src.error(*at(key), f"network.{key}",
                      f"must be true or false, not {type_name(values[key])}")
            out[key] = False
    if not grammar.matches(grammar.DOMAIN, values["domain"]):
        src.error(*at("domain"), "network.domain", f"{type_name(values['domain'])} is not a "
                  "DNS domain", "use lower-case labels separated by dots, e.g. mesh.internal")
    if not grammar.matches(grammar.IFNAME, values["interface"]):
        longest = grammar.IFNAME_MAX - len(grammar.HOP_SUFFIX)
        src.error(*at("interface"), "network.interface",
                  f"{type_name(values['interface'])} is not an interface name",
                  f"use up to {longest} letters, digits, '_', '.', '-' (the kernel allows "
                  f"{grammar.IFNAME_MAX} and wgmesh adds {grammar.HOP_SUFFIX} for relays)")
    return Network(**{k: out[k] for k in NETWORK_DEFAULTS})


def _split_dns(src: YamlSource, values: dict, at, node: Any
               ) -> tuple[tuple[str, tuple[IPAddr, ...]], ...]:
    domains = values["split_dns"]
    if not isinstance(domains, dict):
        src.error(*at("split_dns"), "network.split_dns", f"must be a mapping of domain to "
                  f"nameservers, not {type_name(domains)}",
                  "e.g. split_dns: {corp.example: [198.51.100.53]}")
        return ()
    out = []
    for domain, servers in domains.items():
        where = (domains, domain)
        path = f"network.split_dns.{domain}"
        if not grammar.matches(grammar.DOMAIN, domain):
            src.error(*where, "network.split_dns", f"{type_name(domain)} is not a DNS domain",
                      "use lower-case labels separated by dots, e.g. corp.example")
            continue
        mesh_domain = values["domain"]
        if domain == mesh_domain or domain.endswith("." + mesh_domain) \
                or mesh_domain.endswith("." + domain):
            src.error(*where, path, f"overlaps the mesh's own domain {mesh_domain}",
                      "mesh names come from the mesh; split another domain")
            continue
        if not isinstance(servers, list) or not 1 <= len(servers) <= 3:
            src.error(*where, path, "must be a list of one to three nameserver addresses",
                      "e.g. [198.51.100.53]")
            continue
        addrs = []
        for i, server in enumerate(servers):
            addr = grammar.ip_address(server)
            if addr is None or addr.is_loopback or addr.is_unspecified or addr.is_multicast:
                src.error(servers, i, f"{path}[{i}]", f"{type_name(server)} is not a "
                          "nameserver address", "an IPv4 or IPv6 address, e.g. 198.51.100.53")
            else:
                addrs.append(addr)
        if len(addrs) == len(servers):
            out.append((domain, tuple(addrs)))
    return tuple(sorted(out))


def _pool(src: YamlSource, where, key: str, value: Any, fam: int, sizes: tuple[int, int]):
    """A pool of mesh addresses: a private prefix of sane size."""
    default = ipaddress.ip_network(NETWORK_DEFAULTS[key])
    net = grammar.ip_network(value, fam)
    if net is None:
        src.error(*where, f"network.{key}", f"not an IPv{fam} network: "
                  + grammar.network_error(value), f"e.g. {default}")
        return default
    shortest, longest = sizes
    if not shortest <= net.prefixlen <= longest:
        src.error(*where, f"network.{key}", f"{net} must have a prefix length from "
                  f"/{shortest} to /{longest}", f"e.g. {default}")
        return default
    if net.is_multicast or net.is_loopback or net.is_link_local or net.is_unspecified \
            or net.is_reserved or net.is_global:
        src.error(*where, f"network.{key}", f"{net} is not a private range",
                  "use CGNAT space (100.64.0.0/10) for IPv4 and a ULA (fd00::/8) for IPv6")
        return default
    return net


def _management_networks(src: YamlSource, values: dict, at, out: dict) -> tuple[IPNet, ...]:
    nets = values["management_networks"]
    where = "network.management_networks"
    if not isinstance(nets, list):
        src.error(*at("management_networks"), where,
                  f"must be a list of networks, not {type_name(nets)}",
                  "e.g. [192.0.2.10/32, 2001:db8::/64]")
        return ()
    found = []
    for i, text in enumerate(nets):
        net = grammar.ip_network(text)
        if net is None:
            src.error(nets, i, f"{where}[{i}]", f"not a network: {grammar.network_error(text)}",
                      "write an address with its prefix length, e.g. 192.0.2.0/24")
            continue
        pools = [out["ipv4_pool"]] if net.version == 4 else [out["ipv6_pool"], out["relay_pool"]]
        clash = next((p for p in pools if net.overlaps(p)), None)
        if net.prefixlen == 0 or clash is not None:
            src.error(nets, i, f"{where}[{i}]",
                      f"{net} " + ("is the whole internet" if net.prefixlen == 0
                                   else f"overlaps the mesh pool {clash}"),
                      "list only the controller's or jump hosts' underlay networks")
            continue
        found.append(net)
    return tuple(sorted(set(found), key=lambda n: (n.version, n)))


def _nodes(src: YamlSource, root: Any, network: Network) -> dict[str, Node]:
    nodes = root.get("nodes")
    if nodes is None:
        return {}
    if not isinstance(nodes, dict):
        src.error(root, "nodes", "nodes",
                  f"must be a mapping of node names, not {type_name(nodes)}")
        return {}
    out: dict[str, Node] = {}
    for name in nodes:
        if not grammar.matches(grammar.NODE_NAME, name):
            src.error(nodes, name, join("nodes", name), f"node name {type_name(name)} is not valid",
                      "use lower-case letters, digits and dashes (a DNS label)")
            continue
        path = join("nodes", name)
        spec = src.mapping(nodes, name, path, allowed=NODE_KEYS)
        if spec is None:
            continue
        node = _node(src, name, spec, path, network)
        if node is not None:
            out[name] = node
    return out


def _node(src: YamlSource, name: str, spec: Any, path: str, network: Network) -> Node | None:
    f = Fields(src, spec, path)
    values: dict[str, Any] = {"name": name}

    values["owner"] = f.text("owner")
    if values["owner"] is not None and not grammar.matches(grammar.USER, values["owner"]):
        f.bad("owner", f'owner "{values["owner"]}" is not a user',
              "write it in e-mail form, alice@example.com (a Headscale user with no domain: "
              "alice@)")
        values["owner"] = None
    tags = spec.get("tags", [])
    if not isinstance(tags, list):
        f.bad("tags", f"must be a list of tags, not {type_name(tags)}")
        tags = []
    for i, tag in enumerate(tags):
        if not grammar.matches(grammar.TAG, tag):
            f.ok = False
            src.error(spec["tags"], i, f"{path}.tags[{i}]", f"{type_name(tag)} is not a tag",
                      'write tags as "tag:<name>", the name starting with a letter')
    tags = [t for t in tags if grammar.matches(grammar.TAG, t)]
    if len(set(tags)) != len(tags):
        f.bad("tags", "a tag is listed twice")
    values["tags"] = tuple(sorted(set(tags)))
    if spec.get("owner") is None and not tags:
        src.error(src.data["nodes"], name, path, "a node needs an owner or at least one tag",
                  "add owner: user@example.com, or tags for a server that belongs to no one")
        f.ok = False

    for key, fam in (("address", 4), ("address6", 6)):
        addr = f.address(key, fam)
        if addr is None:
            continue
        v = spec[key]
        pool = network.ipv4_pool if fam == 4 else network.ipv6_pool
        if addr not in pool:
            f.bad(key, f"{v} is outside the mesh pool {pool}", f"pin an address inside {pool}")
        elif not usable_in(addr, pool):
            f.bad(key, f"{v} is the {'network' if addr == pool.network_address else 'broadcast'}"
                  f" address of the pool {pool}", "pin a host address of the pool")
        else:
            values[key] = addr

    values["managed"] = f.flag("managed", True)
    values["ansible_host"] = f.text("ansible_host")
    if values["ansible_host"] is not None and not grammar.host_address(values["ansible_host"]):
        f.bad("ansible_host", f"{type_name(values['ansible_host'])} is not an address or DNS name")
        values["ansible_host"] = None
    key = f.text("public_key")
    if values["managed"]:
        if spec.get("ansible_host") is None:
            src.error(src.data["nodes"], name, path, 'missing required key "ansible_host"',
                      "a managed node needs an address Ansible can reach; for a device "
                      "Ansible does not manage, set managed: false and its public_key")
            f.ok = False
        if key is not None:
            f.bad("public_key", "public_key is only for managed: false nodes",
                  "a managed node's key is made on the host and pinned in mesh.lock.yml")
    elif key is None:
        if spec.get("public_key") is None:
            src.error(src.data["nodes"], name, path,
                      "a node with managed: false needs its public_key",
                      "add the device's WireGuard public key (the output of wg pubkey)")
        f.ok = False
    elif not grammar.public_key(key):
        f.bad("public_key", "not a WireGuard public key",
              "expected 44 characters of base64 encoding 32 bytes")
    else:
        values["public_key"] = key

    ep = f.text("endpoint", grammar.ENDPOINT_TEXT, "host:port",
                "e.g. 192.0.2.11:51820, [2001:db8::1]:51820 or vpn.example.com:51820")
    if ep is not None:
        if grammar.endpoint(ep) is None:
            f.bad("endpoint", f'endpoint "{ep}" is not host:port',
                  "e.g. 192.0.2.11:51820, [2001:db8::1]:51820 or vpn.example.com:51820")
        else:
            values["endpoint"] = ep
    values["site"] = f.text("site", grammar.SITE, "a site name",
                            "use letters, digits, '.', '_' and '-'")
    lan = spec.get("lan_address")
    if lan is not None:
        values["lan_address"] = grammar.ip_address(lan)
        if values["lan_address"] is None:
            f.bad("lan_address", f"{type_name(lan)} is not an IP address")
        if spec.get("site") is None:
            f.bad("lan_address", "lan_address needs a site", "add site: <name> to this node")
    port = spec.get("listen_port")
    if port is not None:
        if isinstance(port, str) or grammar.port(port) is None:
            f.bad("listen_port", f"must be a port number, not {type_name(port)}")
        else:
            values["listen_port"] = port

    for key in ("advertise_routes", "approved_routes"):
        values[key], routes_ok = _routes(src, spec, key, path, network)
        f.ok = f.ok and routes_ok
    for r in values.get("approved_routes", ()):
        if r not in values.get("advertise_routes", ()):
            f.bad("approved_routes", f"{r} is approved but not advertised",
                  "approve only routes listed in advertise_routes")
    for key in ("advertise_exit_node", "approved_exit_node", "relay", "lighthouse", "resolver"):
        values[key] = f.flag(key)
    values["route_snat"] = f.flag("route_snat", True)
    values["ssh_policy"] = f.flag("ssh_policy", network.ssh_policy and values["managed"])
    if values["ssh_policy"] and not values["managed"]:
        f.bad("ssh_policy", "wgmesh runs no sshd on a device Ansible does not manage",
              "remove ssh_policy from this node")
    if values["resolver"] and not values["managed"]:
        f.bad("resolver", "wgmesh runs no resolver on a device Ansible does not manage",
              "make a managed node the resolver")
    for key in ("failover_for", "use_exit_node"):
        values[key] = f.text(key, grammar.NODE_NAME, "a node name")
    if values["failover_for"] == name:
        f.bad("failover_for", "a router cannot back itself up")
    if values["approved_exit_node"] and not values["advertise_exit_node"]:
        f.bad("approved_exit_node", "approved_exit_node needs advertise_exit_node: true")
    if values["use_exit_node"] == name:
        f.bad("use_exit_node", "a node cannot use itself as exit node")
    if values["relay"] and spec.get("endpoint") is None:
        f.bad("relay", "a relay needs a public endpoint", "add endpoint: host:port")
    if values["lighthouse"] and spec.get("endpoint") is None:
        f.bad("lighthouse", "a lighthouse needs a public endpoint (it reports the addresses "
              "it sees nodes come from)", "add endpoint: host:port")
    expires = f.date("expires", "is not a date", "write it as YYYY-MM-DD", times=True)
    if expires is not None:
        values["expires"] = expires
    desc = spec.get("description", "")
    if not isinstance(desc, str) or not desc.isprintable() or len(desc) > limits.MAX_TEXT:
        f.bad("description", f"must be one line of text of at most {limits.MAX_TEXT} "
              "characters")
    else:
        values["description"] = desc
    return Node(**values) if f.ok else None


def _routes(src: YamlSource, spec: Any, key: str, path: str,
            network: Network) -> tuple[tuple[IPNet, ...], bool]:
    """A node's route list: prefixes outside the mesh's own pools and management networks."""
    routes = spec.get(key, [])
    if isinstance(routes, list) and not routes:
        return (), True
    if not isinstance(routes, list):
        src.error(spec, key, join(path, key),
                  f"must be a list of CIDR prefixes, not {type_name(routes)}")
        return (), False
    ok = True
    parsed = []
    reserved = [network.ipv4_pool, network.ipv6_pool, network.relay_pool,
                *network.management_networks]
    nets = [n for n in map(grammar.ip_network, routes) if n is not None and n.prefixlen]
    for default in DEFAULT_ROUTES:
        if sum(n.num_addresses for n in ipaddress.collapse_addresses(
                n for n in nets if n.version == default.version)) == default.num_addresses:
            # Any route set that is a whole family also overlaps the mesh pool (below); say
            # what it really is.
            src.error(spec, key, join(path, key), f"these routes together cover {default}: "
                      "that is an exit node", "offer internet access with advertise_exit_node:"
                      " true and exit-node approval; nodes choose it with use_exit_node")
            return (), False
    for i, r in enumerate(routes):
        where = (spec[key], i, f"{path}.{key}[{i}]")
        net = grammar.ip_network(r)
        if net is None:
            ok = False
            src.error(*where, f"not a CIDR prefix: {grammar.network_error(r)}",
                      "write it as ADDRESS/PREFIX with no host bits")
            continue
        if net.prefixlen == 0:
            ok = False
            src.error(*where, f"{net} is a default route",
                      "use advertise_exit_node: true to offer internet access")
            continue
        clash = next((p for p in reserved if p.version == net.version and net.overlaps(p)),
                     None)
        if clash is not None:
            ok = False
            what = ("a management network" if clash in network.management_networks
                    else "the relay pool" if clash == network.relay_pool else "the mesh pool")
            src.error(*where, f"{net} overlaps {what} {clash}",
                      "a subnet route may not carry mesh addresses or the management path")
            continue
        parsed.append(net)
    return tuple(sorted(parsed, key=lambda n: (n.version, n))), ok


def usable_in(addr: IPAddr, pool: IPNet) -> bool:
    """A host address of the pool: not its network address, nor its IPv4 broadcast."""
    return addr in pool and addr != pool.network_address and (pool.version == 6
                                             or addr != pool.broadcast_address)
