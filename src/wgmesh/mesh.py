"""The mesh definition: ``inventories/<env>/mesh.yml``, network settings and nodes."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wgmesh.yamlsource import YamlSource, join, type_name

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
EMAIL = re.compile(r"^[^@\s:]+@[^@\s:]+$")
TAG = re.compile(r"^tag:[A-Za-z][A-Za-z0-9-]*$")
DOMAIN = re.compile(r"^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
IFNAME = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")

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
    # Destinations a host keeps reaching through its own default gateway when it uses an exit
    # node: the Ansible controller or jump host, so the management path survives.
    "management_networks": [],
}

NODE_KEYS = {
    "ansible_host", "owner", "tags", "address", "address6", "endpoint", "site", "lan_address",
    "advertise_routes", "approved_routes", "advertise_exit_node", "approved_exit_node",
    "use_exit_node", "relay", "managed", "public_key", "expires", "description", "listen_port",
    "route_snat", "failover_for",
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
    management_networks: tuple[IPNet, ...] = ()


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
    # Source-NAT routed traffic into the LAN (LAN hosts then need no route back to the mesh).
    route_snat: bool = True
    # This router backs up another for the same prefixes (only the primary is used by peers).
    failover_for: str | None = None
    managed: bool = True
    public_key: str | None = None
    expires: dt.date | None = None
    description: str = ""

    @property
    def tagged(self) -> bool:
        return bool(self.tags)


@dataclass
class Mesh:
    path: Path
    policy_path: Path | None
    network: Network
    nodes: dict[str, Node]
    source: YamlSource = field(repr=False)
    # Beside mesh.yml unless mesh.yml says otherwise (the lab keeps its own in lab state).
    lock_path: Path = field(default=Path("mesh.lock.yml"))

    def where(self, node: str, key: str | None = None) -> tuple[int, int]:
        """Position of a node (or one of its keys) in mesh.yml, for errors."""
        nodes = self.source.data.get("nodes")
        if key is None:
            return YamlSource.position(nodes, node)
        return YamlSource.position(nodes[node], key)


def resolve_path(path: str | Path) -> Path:
    path = Path(path)
    return path / "mesh.yml" if path.is_dir() else path


def load_mesh(path: str | Path) -> Mesh:
    """Load and check mesh.yml on its own (cross-checks with the policy come later)."""
    path = resolve_path(path)
    src = YamlSource(path)
    root = src.mapping(src.data, None, "",
                       allowed={"plugin", "policy", "lockfile", "network", "nodes"},
                       required={"nodes"})
    if root is None:
        src.check()
    if "plugin" in root and root["plugin"] != "wgmesh":
        src.error(root, "plugin", "plugin", f'plugin must be "wgmesh", not "{root["plugin"]}"')
    policy_path = None
    if "policy" in root:
        if isinstance(root["policy"], str) and root["policy"]:
            policy_path = (path.parent / root["policy"]).resolve()
        else:
            src.error(root, "policy", "policy", "must be the path of a policy file",
                      "e.g. policy: ../../policies/prod.hujson (relative to mesh.yml)")
    lock_path = path.with_name("mesh.lock.yml")
    if "lockfile" in root:
        if isinstance(root["lockfile"], str) and root["lockfile"]:
            lock_path = path.parent / root["lockfile"]
        else:
            src.error(root, "lockfile", "lockfile", "must be the path of the lockfile",
                      "omit it to keep mesh.lock.yml beside mesh.yml")
    network = _network(src, root)
    nodes = _nodes(src, root, network)
    src.check()
    return Mesh(path, policy_path, network, nodes, src, lock_path)


def _network(src: YamlSource, root: Any) -> Network:
    values = dict(NETWORK_DEFAULTS)
    node = root.get("network")
    if node is not None and src.mapping(root, "network", "network",
                                        allowed=set(NETWORK_DEFAULTS)) is not None:
        values.update(node)

    def at(key):
        return (node, key) if node is not None and key in node else (root, "network")

    out = dict(values)
    for key in ("listen_port", "mtu", "keepalive", "relay_port"):
        limits = {"listen_port": (1, 65535), "mtu": (1280, 9000), "keepalive": (0, 3600),
                  "relay_port": (1, 65535)}[key]
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int) or not limits[0] <= v <= limits[1]:
            src.error(*at(key), f"network.{key}",
                      f"must be a number from {limits[0]} to {limits[1]}, not "
                      + (str(v) if isinstance(v, int) and not isinstance(v, bool)
                         else type_name(v)))
    for key, cls in (("ipv4_pool", ipaddress.IPv4Network), ("ipv6_pool", ipaddress.IPv6Network),
                     ("relay_pool", ipaddress.IPv6Network)):
        try:
            out[key] = cls(str(values[key]))
        except ValueError as exc:
            src.error(*at(key), f"network.{key}", f"not an IP{key[2]} network: {exc}")
            out[key] = cls(NETWORK_DEFAULTS[key])
    if out["relay_pool"].overlaps(out["ipv6_pool"]) or out["relay_pool"].prefixlen > 64:
        src.error(*at("relay_pool"), "network.relay_pool",
                  f"{out['relay_pool']} must be a /64 (or larger) outside ipv6_pool",
                  "e.g. fd7a:115c:a1e1::/64")
    out["management_networks"] = _management_networks(src, values, at, out)
    if not isinstance(values["domain"], str) or not DOMAIN.match(values["domain"]):
        src.error(*at("domain"), "network.domain", f"{type_name(values['domain'])} is not a "
                  "DNS domain", "use lower-case labels separated by dots, e.g. mesh.internal")
    if not isinstance(values["interface"], str) or not IFNAME.match(values["interface"]):
        src.error(*at("interface"), "network.interface",
                  f"{type_name(values['interface'])} is not an interface name",
                  "use up to 15 letters, digits, '_', '.', '-'")
    return Network(**{k: out[k] for k in NETWORK_DEFAULTS})


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
        try:
            net = ipaddress.ip_network(str(text)) if isinstance(text, str) else None
        except ValueError as exc:
            src.error(nets, i, f"{where}[{i}]", f"not a network: {exc}",
                      "write an address with its prefix length, e.g. 192.0.2.0/24")
            continue
        if net is None:
            src.error(nets, i, f"{where}[{i}]", f"{type_name(text)} is not a network")
            continue
        pool = out["ipv4_pool"] if net.version == 4 else out["ipv6_pool"]
        if net.prefixlen == 0 or net.overlaps(pool):
            src.error(nets, i, f"{where}[{i}]",
                      f"{net} " + ("is the whole internet" if net.prefixlen == 0
                                   else f"overlaps the mesh pool {pool}"),
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
        path = join("nodes", name)
        if not isinstance(name, str) or not NODE_NAME.match(name):
            src.error(nodes, name, path, f'node name "{name}" is not valid',
                      "use lower-case letters, digits and dashes (a DNS label)")
            continue
        spec = src.mapping(nodes, name, path, allowed=NODE_KEYS)
        if spec is None:
            continue
        node = _node(src, name, spec, path, network)
        if node is not None:
            out[name] = node
    return out


def _node(src: YamlSource, name: str, spec: Any, path: str, network: Network) -> Node | None:
    ok = True
    values: dict[str, Any] = {"name": name}

    def bad(key: str, message: str, fix: str = "") -> None:
        nonlocal ok
        ok = False
        src.error(spec, key, join(path, key), message, fix)

    def text(key: str) -> str | None:
        v = spec.get(key)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            bad(key, f"must be text, not {type_name(v)}")
            return None
        return v

    def flag(key: str) -> bool:
        v = spec.get(key, False)
        if not isinstance(v, bool):
            bad(key, f"must be true or false, not {type_name(v)}")
            return False
        return v

    owner = text("owner")
    if owner is not None and not EMAIL.match(owner):
        bad("owner", f'owner "{owner}" is not a user', "write it in e-mail form: alice@example.com")
    values["owner"] = owner
    tags = spec.get("tags", [])
    if not isinstance(tags, list):
        bad("tags", f"must be a list of tags, not {type_name(tags)}")
        tags = []
    for i, tag in enumerate(tags):
        if not isinstance(tag, str) or not TAG.match(tag):
            ok = False
            src.error(spec["tags"], i, f"{path}.tags[{i}]", f"{type_name(tag)} is not a tag",
                      'write tags as "tag:<name>", the name starting with a letter')
    if len(set(tags)) != len(tags):
        bad("tags", "a tag is listed twice")
    values["tags"] = tuple(sorted(set(tags)))
    if owner is None and not tags:
        src.error(src.data["nodes"], name, path, "a node needs an owner or at least one tag",
                  "add owner: user@example.com, or tags for a server that belongs to no one")
        ok = False

    for key, cls, fam in (("address", ipaddress.IPv4Address, 4),
                          ("address6", ipaddress.IPv6Address, 6)):
        v = spec.get(key)
        if v is None:
            continue
        try:
            values[key] = cls(str(v))
        except ValueError:
            bad(key, f"{type_name(v)} is not an IPv{fam} address")
            continue
        pool = network.ipv4_pool if fam == 4 else network.ipv6_pool
        if values[key] not in pool:
            bad(key, f"{v} is outside the mesh pool {pool}", f"pin an address inside {pool}")

    values["managed"] = spec.get("managed", True)
    if not isinstance(values["managed"], bool):
        bad("managed", f"must be true or false, not {type_name(values['managed'])}")
        values["managed"] = True
    values["ansible_host"] = text("ansible_host")
    key = text("public_key")
    if values["managed"]:
        if values["ansible_host"] is None:
            src.error(src.data["nodes"], name, path, 'missing required key "ansible_host"',
                      "a managed node needs an address Ansible can reach; for a device "
                      "Ansible does not manage, set managed: false and its public_key")
            ok = False
        if key is not None:
            bad("public_key", "public_key is only for managed: false nodes",
                "a managed node's key is made on the host and pinned in mesh.lock.yml")
    else:
        if key is None:
            src.error(src.data["nodes"], name, path,
                      "a node with managed: false needs its public_key",
                      "add the device's WireGuard public key (the output of wg pubkey)")
            ok = False
        elif not valid_public_key(key):
            bad("public_key", "not a WireGuard public key",
                "expected 44 characters of base64 encoding 32 bytes")
        values["public_key"] = key

    ep = text("endpoint")
    if ep is not None:
        if parse_endpoint(ep) is None:
            bad("endpoint", f'endpoint "{ep}" is not host:port',
                "e.g. 192.0.2.11:51820, [2001:db8::1]:51820 or vpn.example.com:51820")
        values["endpoint"] = ep
    values["site"] = text("site")
    lan = spec.get("lan_address")
    if lan is not None:
        try:
            values["lan_address"] = ipaddress.ip_address(str(lan))
        except ValueError:
            bad("lan_address", f"{type_name(lan)} is not an IP address")
        if values["site"] is None:
            bad("lan_address", "lan_address needs a site", "add site: <name> to this node")
    port = spec.get("listen_port")
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            bad("listen_port", f"must be a port number, not {type_name(port)}")
        else:
            values["listen_port"] = port

    for key in ("advertise_routes", "approved_routes"):
        routes = spec.get(key, [])
        if not isinstance(routes, list):
            bad(key, f"must be a list of CIDR prefixes, not {type_name(routes)}")
            continue
        parsed = []
        for i, r in enumerate(routes):
            try:
                net = ipaddress.ip_network(str(r))
            except ValueError as exc:
                ok = False
                src.error(spec[key], i, f"{path}.{key}[{i}]", f"not a CIDR prefix: {exc}",
                          "write it as ADDRESS/PREFIX with no host bits")
                continue
            if net.prefixlen == 0:
                ok = False
                src.error(spec[key], i, f"{path}.{key}[{i}]", f"{net} is a default route",
                          "use advertise_exit_node: true to offer internet access")
                continue
            parsed.append(net)
        values[key] = tuple(sorted(parsed, key=lambda n: (n.version, n)))
    for r in values.get("approved_routes", ()):
        if r not in values.get("advertise_routes", ()):
            bad("approved_routes", f"{r} is approved but not advertised",
                "approve only routes listed in advertise_routes")
    for key in ("advertise_exit_node", "approved_exit_node", "relay"):
        values[key] = flag(key)
    values["route_snat"] = flag("route_snat") if "route_snat" in spec else True
    values["failover_for"] = text("failover_for")
    if values["failover_for"] == name:
        bad("failover_for", "a router cannot back itself up")
    if values["approved_exit_node"] and not values["advertise_exit_node"]:
        bad("approved_exit_node", "approved_exit_node needs advertise_exit_node: true")
    values["use_exit_node"] = text("use_exit_node")
    if values["use_exit_node"] == name:
        bad("use_exit_node", "a node cannot use itself as exit node")
    if values["relay"] and "endpoint" not in values:
        bad("relay", "a relay needs a public endpoint", "add endpoint: host:port")
    exp = spec.get("expires")
    if exp is not None:
        try:
            values["expires"] = exp if isinstance(exp, dt.date) else dt.date.fromisoformat(str(exp))
        except ValueError:
            bad("expires", f"{type_name(exp)} is not a date", "write it as YYYY-MM-DD")
    values["description"] = str(spec.get("description", ""))
    return Node(**values) if ok else None


def valid_public_key(key: str) -> bool:
    try:
        return len(key) == 44 and len(base64.b64decode(key, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def parse_endpoint(text: str) -> tuple[str, int] | None:
    """'host:port' or '[v6]:port' -> (host, port), or None when malformed."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", text)
    if not m:
        return None
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if m.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return (host, int(port)) if 1 <= int(port) <= 65535 else None
