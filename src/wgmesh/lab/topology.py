"""The lab's topology: segments, NAT routers and hosts, loaded from a YAML file and checked.

A topology file is also an Ansible inventory source (``plugin: wgmesh_lab``), so the lab that
``wgmesh lab up`` builds and the hosts Ansible sees come from one file.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wgmesh.yamlsource import Fields, YamlSource, join, type_name

# Interface names are limited to 15 bytes; fabric-side veths are "<node>.<n>".
NODE_NAME = re.compile(r"[a-z][a-z0-9-]{0,11}", re.ASCII)
LAB_NAME = re.compile(r"[a-z][a-z0-9]{0,7}", re.ASCII)
NAT_KINDS = ("endpoint-independent", "symmetric")
# How a host runs: "namespace" (the fast default: namespaces and an sshd, no init system) or
# "systemd" (a Debian root file system booted by systemd-nspawn, with systemd as PID 1).
INITS = ("namespace", "systemd")
# The Debian releases a systemd host can run.
RELEASES = ("bookworm", "trixie")
# Whom Ansible connects as: root, or (systemd hosts) wgadmin, who has sudo and becomes
# root, or guest, who has neither (for the failure a missing become gives).
USERS = ("root", "wgadmin", "guest")
RESERVED = {"fabric"}
DEFAULT_STATE_ROOT = Path("/run/wgmesh-lab")


@dataclass(frozen=True)
class Segment:
    """An L2 segment: a bridge in the fabric namespace.

    ``mgmt`` is the fabric's own address on it, through which Ansible reaches hosts; the
    fabric never forwards, so as a default gateway it is a dead end.
    """

    name: str
    subnet: ipaddress.IPv4Network
    mgmt: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address


@dataclass(frozen=True)
class Router:
    name: str
    uplink: str
    wan_address: ipaddress.IPv4Address
    lan: str
    lan_address: ipaddress.IPv4Address
    nat: str


@dataclass(frozen=True)
class Host:
    name: str
    # Segment name -> address, in file order; the first is the primary (sshd, default route).
    interfaces: dict[str, ipaddress.IPv4Address]
    wireguard: bool
    description: str = ""
    init: str = "namespace"
    release: str = "bookworm"
    user: str = "root"

    @property
    def primary_segment(self) -> str:
        return next(iter(self.interfaces))

    @property
    def address(self) -> ipaddress.IPv4Address:
        return self.interfaces[self.primary_segment]


@dataclass(frozen=True)
class Topology:
    name: str
    source: Path
    state_dir: Path
    segments: dict[str, Segment]
    routers: dict[str, Router]
    hosts: dict[str, Host]
    extra: dict[str, Any] = field(default_factory=dict)

    def netns(self, node: str) -> str:
        """Network namespace name of a host, router or the fabric."""
        return f"{self.name}-{node}"

    @property
    def fabric(self) -> str:
        return self.netns("fabric")

    def router_of(self, segment: str) -> Router | None:
        return next((r for r in self.routers.values() if r.lan == segment), None)

    def natted(self, host: Host) -> Router | None:
        """The NAT router a host sits behind, if its primary segment is a NAT LAN."""
        return self.router_of(host.primary_segment)


def resolve_path(path: str | Path) -> Path:
    """Accept an inventory directory or the topology file itself."""
    path = Path(path)
    return path / "topology.yml" if path.is_dir() else path


def load_topology(path: str | Path) -> Topology:
    """Load and check a topology file; raises InputError listing every problem."""
    path = resolve_path(path)
    src = YamlSource(path)
    root = src.mapping(
        src.data, None, "",
        allowed={"plugin", "name", "state_dir", "segments", "routers", "hosts"},
        required={"name", "segments", "hosts"},
    )
    if root is None:
        src.check()
    name = str(root.get("name", ""))
    if "name" in root and not LAB_NAME.fullmatch(name):
        src.error(root, "name", "name", f'lab name "{name}" is not valid',
                  "use 1-8 lower-case letters and digits, starting with a letter")
    if "plugin" in root and root["plugin"] not in ("wgmesh_lab", "wgmesh.mesh.wgmesh_lab"):
        src.error(root, "plugin", "plugin", f'plugin must be "wgmesh_lab", not "{root["plugin"]}"')

    segments = _segments(src, root)
    routers = _routers(src, root, segments)
    hosts = _hosts(src, root, segments, routers)
    src.check()

    state_dir = Path(root["state_dir"]) if root.get("state_dir") else DEFAULT_STATE_ROOT / name
    return Topology(name, path.resolve(), state_dir, segments, routers, hosts)


def _names(src: YamlSource, parent: Any, key: str) -> dict[str, Any]:
    node = parent.get(key)
    if node is None:
        return {}
    if not isinstance(node, dict):
        src.error(parent, key, key, f"must be a mapping of names, not {type_name(node)}")
        return {}
    out = {}
    for name, value in node.items():
        if not isinstance(name, str) or not NODE_NAME.fullmatch(name) or name in RESERVED:
            src.error(node, name, join(key, name), f'name "{name}" is not valid',
                      "use 1-12 lower-case letters, digits and dashes, starting with a letter"
                      + (f'; "{name}" is reserved' if name in RESERVED else ""))
            continue
        out[name] = value
    return out


def _address(src: YamlSource, parent: Any, key: str, path: str, seg: Segment | None):
    value = parent[key]
    try:
        addr = ipaddress.IPv4Address(str(value))
    except ValueError:
        src.error(parent, key, path, f"{type_name(value)} is not an IPv4 address")
        return None
    if seg is not None and (
        addr not in seg.subnet or addr in (seg.subnet.network_address, seg.subnet.broadcast_address)
    ):
        src.error(parent, key, path, f"{addr} is not a host address of segment "
                  f'"{seg.name}" ({seg.subnet})', f"pick an address inside {seg.subnet}")
        return None
    return addr


def _segments(src: YamlSource, root: Any) -> dict[str, Segment]:
    out: dict[str, Segment] = {}
    for name, _node in _names(src, root, "segments").items():
        path = join("segments", name)
        seg_map = src.mapping(root["segments"], name, path, allowed={"subnet", "mgmt"},
                              required={"subnet"})
        if seg_map is None or "subnet" not in seg_map:
            continue
        try:
            subnet = ipaddress.IPv4Network(str(seg_map["subnet"]))
        except ValueError as exc:
            src.error(seg_map, "subnet", join(path, "subnet"), f"not an IPv4 network: {exc}",
                      "write it as ADDRESS/PREFIX with no host bits, e.g. 198.51.100.0/26")
            continue
        if subnet.num_addresses < 4:
            src.error(seg_map, "subnet", join(path, "subnet"), f"{subnet} is too small",
                      "use a prefix of /30 or shorter")
            continue
        mgmt = subnet.broadcast_address - 1
        provisional = Segment(name, subnet, mgmt, mgmt)
        if "mgmt" in seg_map:
            mgmt = _address(src, seg_map, "mgmt", join(path, "mgmt"), provisional) or mgmt
        out[name] = Segment(name, subnet, mgmt, mgmt)
    for a, b in _pairs(list(out.values())):
        if a.subnet.overlaps(b.subnet):
            src.error(root["segments"], b.name, join("segments", b.name),
                      f'subnet {b.subnet} overlaps segment "{a.name}" ({a.subnet})',
                      "give every segment its own subnet")
    return out


def _pairs(items: list) -> list[tuple]:
    return [(a, b) for i, a in enumerate(items) for b in items[i + 1:]]


def _segment_ref(src, parent, key, path, segments) -> Segment | None:
    name = parent[key]
    if name not in segments:
        src.error(parent, key, path, f'unknown segment "{name}"',
                  "expected one of: " + ", ".join(sorted(segments)))
        return None
    return segments[name]


def _routers(src: YamlSource, root: Any, segments: dict[str, Segment]) -> dict[str, Router]:
    out: dict[str, Router] = {}
    lan_owner: dict[str, str] = {}
    for name, _ in _names(src, root, "routers").items():
        path = join("routers", name)
        node = src.mapping(root["routers"], name, path,
                           allowed={"uplink", "wan_address", "lan", "lan_address", "nat"},
                           required={"uplink", "wan_address", "lan", "lan_address"})
        if node is None or not {"uplink", "wan_address", "lan", "lan_address"} <= set(node):
            continue
        f = Fields(src, node, path)
        uplink = _segment_ref(src, node, "uplink", join(path, "uplink"), segments)
        lan = _segment_ref(src, node, "lan", join(path, "lan"), segments)
        nat = f.choice("nat", NAT_KINDS, "endpoint-independent", "NAT behaviour")
        if uplink is None or lan is None:
            continue
        if uplink.name == lan.name:
            f.bad("lan", "a router's LAN must differ from its uplink")
            continue
        if lan.name in lan_owner:
            f.bad("lan", f'segment "{lan.name}" already has router "{lan_owner[lan.name]}"',
                  "give each NAT router its own LAN segment")
            continue
        wan = _address(src, node, "wan_address", join(path, "wan_address"), uplink)
        lan_addr = _address(src, node, "lan_address", join(path, "lan_address"), lan)
        if wan is None or lan_addr is None:
            continue
        lan_owner[lan.name] = name
        out[name] = Router(name, uplink.name, wan, lan.name, lan_addr, nat)
        # Hosts on a NAT LAN route through the router instead of the dead-end fabric.
        segments[lan.name] = Segment(lan.name, lan.subnet, lan.mgmt, lan_addr)
    return out


def _hosts(src, root, segments: dict[str, Segment], routers: dict[str, Router]) -> dict[str, Host]:
    out: dict[str, Host] = {}
    taken: dict[tuple[str, ipaddress.IPv4Address], str] = {}
    for seg in segments.values():
        taken[(seg.name, seg.mgmt)] = "the fabric (mgmt)"
    for r in routers.values():
        taken[(r.uplink, r.wan_address)] = f'router "{r.name}"'
        taken[(r.lan, r.lan_address)] = f'router "{r.name}"'
    for name in _names(src, root, "routers"):
        if name in (root.get("hosts") or {}):
            src.error(root["hosts"], name, join("hosts", name),
                      f'"{name}" is both a router and a host', "rename one of them")
    for name, _ in _names(src, root, "hosts").items():
        path = join("hosts", name)
        node = src.mapping(root["hosts"], name, path,
                           allowed={"interfaces", "wireguard", "description", "init",
                                    "release", "user"},
                           required={"interfaces"})
        if node is None or "interfaces" not in node:
            continue
        ifaces = src.mapping(node, "interfaces", join(path, "interfaces"), allowed=set(segments))
        if ifaces is None:
            continue
        if not ifaces:
            Fields(src, node, path).bad("interfaces", "a host needs an interface",
                                        "name at least one segment and the host's address on it")
            continue
        addresses = {}
        for seg_name in ifaces:
            if seg_name not in segments:
                continue  # already reported as an unknown key
            ipath = join(path, f"interfaces.{seg_name}")
            addr = _address(src, ifaces, seg_name, ipath, segments[seg_name])
            if addr is None:
                continue
            owner = taken.get((seg_name, addr))
            if owner:
                src.error(ifaces, seg_name, ipath, f"{addr} is already used by {owner}",
                          "give every address on a segment to one node only")
                continue
            taken[(seg_name, addr)] = f'host "{name}"'
            addresses[seg_name] = addr
        f = Fields(src, node, path)
        wireguard = f.flag("wireguard", True)
        init = f.choice("init", INITS, "namespace", "init")
        release = f.choice("release", RELEASES, "bookworm", "release")
        user = f.choice("user", USERS, "root", "user")
        if user != "root" and init != "systemd":
            f.bad("user", f'user "{user}" needs init: systemd', "namespace hosts have root only")
        if len(addresses) == len(ifaces):
            out[name] = Host(name, addresses, bool(wireguard), str(node.get("description", "")),
                             str(init), str(release), str(user))
    if not out and not src.problems:
        src.error(root, "hosts", "hosts", "the lab has no hosts", "add at least one host")
    return out
