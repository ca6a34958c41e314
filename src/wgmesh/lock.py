"""mesh.lock.yml: stable mesh addresses and pinned public keys.

Allocated once, never moved, never reused: a removed node's addresses are kept under
``retired`` so a newcomer cannot inherit firewall rules still present on hosts that have not
been updated yet. The file is edited round-trip (comments and order survive) and replaced
atomically, and is meant to be committed so that a git diff shows every change.
"""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from wgmesh import grammar
from wgmesh.errors import InputError, Problem, write_atomic
from wgmesh.mesh import Mesh, usable_in
from wgmesh.yamlsource import Fields, YamlSource, join, type_name, yaml_date

HEADER = """\
# mesh.lock.yml - written by wgmesh; commit it with mesh.yml.
# Mesh addresses are allocated once and kept; retired addresses are never handed out again.
# public_key is pinned when a host is first seen: a host presenting another key is refused.
"""

# How long before network.key_max_age_days a key's age is announced.
KEY_AGE_NOTICE_DAYS = 14


@dataclass(frozen=True)
class Allocation:
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    public_key: str | None
    key_date: dt.date | None = None  # when public_key was pinned


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 200
    # Equal values (two keys pinned the same day) are written out, never as YAML aliases.
    y.representer.ignore_aliases = lambda *_: True
    return y


class Lock:
    """The lockfile's content; ``allocate`` brings it in line with a mesh."""

    def __init__(self, path: Path):
        self.path = path
        self.name = str(path)
        self._pinned: set[str] = set()  # keys pinned since the file was read
        self.data: CommentedMap
        if path.exists():
            # Read fast; a file with problems is read again for their positions.
            try:
                canonical = _read_canonical(path)
                if canonical is not None:
                    self.data = canonical
                    self._validate(YamlSource.of(path, canonical))
                else:
                    self._load(YamlSource(path, fast=True))
            except InputError:
                self._load(YamlSource(path))
        else:
            self.data = CommentedMap()
        # The file as it was, for diffs; whether allocate() or pin_key() changed anything is
        # tracked as they do it (dumping the whole file to compare costs seconds at 5,000).
        self.text_before = path.read_text(encoding="utf-8") if path.exists() else ""
        self.dirty = False
        # Nodes given addresses by allocate() that the file does not hold yet (read-only
        # commands use them in memory; `wgmesh lock` and site.yml write them).
        self.allocated: list[str] = []
        self.data.setdefault("version", 1)
        for section in ("nodes", "retired"):  # absent or empty (null): none yet
            if self.data.get(section) is None:
                self.data[section] = CommentedMap()
        # Dates read as text (the line reader, YAML 1.2) are kept as dates, as they are
        # written, so a file read and written again does not change.
        for entry in self.data["nodes"].values():
            if isinstance(entry, dict) and isinstance(entry.get("key_date"), str):
                entry["key_date"] = yaml_date(entry["key_date"])

    def _load(self, src: YamlSource) -> None:
        self.data = src.data if src.data is not None else CommentedMap()
        self._validate(src)

    def _validate(self, src: YamlSource) -> None:
        """Every entry as wgmesh writes it, or every problem with its place; a file that is
        not a lockfile is never rewritten."""
        fix = "restore it from git, or delete the entry and run wgmesh lock"
        root = src.mapping(self.data, None, "", allowed={"version", "nodes", "retired"})
        if root is None:
            src.check()
        if root.get("version", 1) != 1 or isinstance(root.get("version"), bool):
            src.error(root, "version", "version", "unknown lockfile version", "expected 1")
        for section in ("nodes", "retired"):
            entries = root.get(section)
            if entries is None:
                continue
            if not isinstance(entries, dict):
                src.error(root, section, section, f"must be a mapping of node names, not "
                          f"{type_name(entries)}", fix)
                continue
            keys = {"ipv4", "ipv6"} | ({"public_key", "key_date"} if section == "nodes"
                                       else set())
            for name in entries:
                path = join(section, name)
                if not grammar.matches(grammar.NODE_NAME, name):
                    src.error(entries, name, path, f"node name {type_name(name)} is not valid",
                              fix)
                    continue
                entry = src.mapping(entries, name, path, allowed=keys,
                                    required={"ipv4", "ipv6"})
                if entry is None:
                    continue
                f = Fields(src, entry, path)
                f.address("ipv4", 4, fix)
                f.address("ipv6", 6, fix)
                f.date("key_date", "is not a date (YYYY-MM-DD)", fix)
                if "public_key" in entry and not grammar.public_key(entry["public_key"]):
                    f.bad("public_key", "not a WireGuard public key (44 characters of base64 "
                          "encoding 32 bytes)", fix)
        src.check()

    @property
    def nodes(self) -> CommentedMap:
        return self.data["nodes"]

    @property
    def retired(self) -> CommentedMap:
        return self.data["retired"]

    def dump(self) -> str:
        if not self.data:
            return ""
        buf = io.StringIO()
        _yaml().dump(self.data, buf)
        text = buf.getvalue()
        return text if text.startswith("#") else HEADER + text

    @property
    def changed(self) -> bool:
        return self.dirty

    def save(self) -> bool:
        """Write atomically if the content changed; True if it was written. The file is
        written round-trip: what was read fast is carried onto a copy that keeps comments."""
        if not self.dirty:
            return False
        if not isinstance(self.data, CommentedMap):
            rt = YamlSource(self.path).data if self.path.exists() else None
            rt = rt if isinstance(rt, CommentedMap) else CommentedMap()
            _sync(rt, self.data)
            self.data = rt
        text = self.dump()
        write_atomic(self.path, text, 0o644)
        self.text_before, self.dirty = text, False
        return True

    def allocate(self, mesh: Mesh) -> dict[str, Allocation]:
        """Addresses for every node: kept from the lock, pinned in mesh.yml, or new."""
        problems: list[Problem] = []
        pool4, pool6 = mesh.network.ipv4_pool, mesh.network.ipv6_pool
        owner4: dict[ipaddress.IPv4Address, str] = {}
        owner6: dict[ipaddress.IPv6Address, str] = {}

        def err(node: str, key: str | None, message: str, fix: str = "") -> None:
            line, col = mesh.where(node, key) if key else mesh.where(node)
            problems.append(Problem(str(mesh.path), line, col, f"nodes.{node}" +
                                    (f".{key}" if key else ""), message, fix))

        # Retired addresses stay taken, unless their own node comes back.
        for name, entry in self.retired.items():
            if name not in mesh.nodes:
                owner4[ipaddress.IPv4Address(entry["ipv4"])] = f"removed node {name}"
                owner6[ipaddress.IPv6Address(entry["ipv6"])] = f"removed node {name}"
        for name in list(self.nodes):
            if name not in mesh.nodes:
                _insert_sorted(self.retired, name, CommentedMap(
                    [("ipv4", self.nodes[name]["ipv4"]), ("ipv6", self.nodes[name]["ipv6"])]))
                owner4[ipaddress.IPv4Address(self.nodes[name]["ipv4"])] = f"removed node {name}"
                owner6[ipaddress.IPv6Address(self.nodes[name]["ipv6"])] = f"removed node {name}"
                del self.nodes[name]
                self.dirty = True

        want: dict[str, dict[str, object]] = {}
        for name, node in mesh.nodes.items():
            entry = self.nodes.get(name) or self.retired.get(name) or {}
            v4 = node.address or (grammar.ip_address(entry["ipv4"], 4) if "ipv4" in entry
                                  else None)
            v6 = node.address6 or (grammar.ip_address(entry["ipv6"], 6) if "ipv6" in entry
                                   else None)
            if v4 is not None and not usable_in(v4, pool4):
                err(name, None, f"locked address {v4} is not a host address of the pool {pool4}",
                    "the pool changed: pin the node's address or move it back")
                v4 = None
            if v6 is not None and not usable_in(v6, pool6):
                err(name, None, f"locked address {v6} is not a host address of the pool {pool6}",
                    "the pool changed: pin the node's address6 or move it back")
                v6 = None
            want[name] = {"ipv4": v4, "ipv6": v6}
            for value, owners, key in ((v4, owner4, "address"), (v6, owner6, "address6")):
                if value is None:
                    continue
                if value in owners:
                    err(name, key if getattr(node, key) else None,
                        f"address {value} is already taken by {owners[value]}",
                        "pin another address, or drop the pin to get a free one")
                else:
                    owners[value] = f"node {name}"

        free4 = _free(pool4, owner4)
        free6 = _free(pool6, owner6)
        for name in sorted(mesh.nodes):
            for fam, free, owners in (("ipv4", free4, owner4), ("ipv6", free6, owner6)):
                if want[name][fam] is None:
                    addr = next(free, None)
                    if addr is None:
                        err(name, None, f"the {fam} pool is exhausted",
                            "enlarge network.ipv4_pool/ipv6_pool or retire fewer nodes")
                        continue
                    owners[addr] = f"node {name}"
                    want[name][fam] = addr
                    if fam == "ipv4":
                        self.allocated.append(name)
        if problems:
            raise InputError(problems)

        out: dict[str, Allocation] = {}
        for name in sorted(mesh.nodes):  # in name order, new entries append (no search)
            node = mesh.nodes[name]
            entry = self.nodes.get(name)
            if entry is None:
                entry = CommentedMap()
                _insert_sorted(self.nodes, name, entry)
            if self.retired.pop(name, None) is not None:
                self.dirty = True
            values = {"ipv4": str(want[name]["ipv4"]), "ipv6": str(want[name]["ipv6"])}
            if not node.managed and node.public_key:
                values["public_key"] = node.public_key
            for k, v in values.items():
                if entry.get(k) != v:
                    entry[k] = v
                    self.dirty = True
            key = node.public_key or entry.get("public_key")
            out[name] = Allocation(want[name]["ipv4"], want[name]["ipv6"], key,
                                   None if node.public_key else yaml_date(entry.get("key_date")))
        return {name: out[name] for name in mesh.nodes}

    def pin_key(self, node: str, public_key: str, today: dt.date | None = None) -> str | None:
        """Record a host's key on first sight; returns the pinned key if it differs."""
        if not grammar.public_key(public_key):
            raise InputError([Problem(self.name, 0, 0, f"nodes.{node}.public_key",
                                      f"host {node} reports {type_name(public_key)}, which is "
                                      "not a WireGuard public key", "check the host's key file "
                                      "(wg pubkey < /etc/wireguard/<interface>.key)")])
        entry = self.nodes[node]
        pinned = entry.get("public_key")
        if pinned is None:
            entry["public_key"] = public_key
            entry["key_date"] = today or dt.date.today()
            self.dirty = True
            self._pinned.add(node)
            return None
        return None if pinned == public_key else pinned

    def pinned_now(self, node: str) -> bool:
        """Whether this node's key was pinned since the lockfile was read."""
        return node in self._pinned

    def unpin_key(self, node: str) -> None:
        """Forget a host's key (rotation): the key it reports next is pinned."""
        entry = self.nodes.get(node)
        if entry is not None and entry.pop("public_key", None) is not None:
            entry.pop("key_date", None)
            self.dirty = True


def _free(pool, taken):
    """Addresses of a pool not taken, lowest first (skipping the network address)."""
    first = int(pool.network_address) + 1
    last = int(pool.broadcast_address) - (1 if pool.version == 4 else 0)
    used = {int(a) for a in taken}
    cls = type(pool.network_address)
    i = first
    while i <= last:
        if i not in used:
            yield cls(i)
        i += 1


_SECTION = re.compile(r"(nodes|retired):( \{\})?")
_ENTRY = re.compile(r"  ([a-z0-9-]+):")
_FIELD = re.compile(r"    (ipv4|ipv6|public_key|key_date): ([A-Za-z0-9+/=.:-]+)")


def _read_canonical(path: Path) -> dict | None:
    """The lockfile in exactly the form wgmesh writes it, read line by line (a YAML parser
    in Python spends most of a 5,000-node read building objects); None for anything else,
    which the YAML path then reads. Every value read here still passes the validation."""
    data: dict = {}
    section: dict | None = None
    entry: dict | None = None
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            if m := _FIELD.fullmatch(line):
                if entry is None or m.group(1) in entry:
                    return None
                entry[m.group(1)] = m.group(2)
            elif m := _ENTRY.fullmatch(line):
                if section is None or m.group(1) in section:
                    return None
                entry = section[m.group(1)] = {}
            elif m := _SECTION.fullmatch(line):
                if m.group(1) in data:
                    return None
                section = data[m.group(1)] = {}
                entry = None
                if m.group(2):
                    section = None
            elif line == "version: 1" and "version" not in data:
                data["version"] = 1
            else:
                return None
    return data


def _sync(rt: CommentedMap, want: dict, depth: int = 0) -> None:
    """Make a round-trip map equal to ``want``, keeping what did not change (and its
    comments). New entries of the node sections (depth 1) go in name order, other new keys
    after the rest."""
    for key in [k for k in rt if k not in want]:
        del rt[key]
    for key, value in want.items():
        if isinstance(value, dict):
            if not isinstance(rt.get(key), CommentedMap):
                if depth == 1:
                    _insert_sorted(rt, key, CommentedMap())
                else:
                    rt[key] = CommentedMap()
            _sync(rt[key], value, depth + 1)
        elif key not in rt or rt[key] != value:
            rt[key] = value


def _insert_sorted(m: CommentedMap, key: str, value) -> None:
    """Add a new entry in name order without disturbing existing entries or comments."""
    if not m or key > next(reversed(m)) or not isinstance(m, CommentedMap):
        m[key] = value  # after the last (the common case), or where order is not kept
        return
    pos = sum(1 for k in m if k < key)
    m.insert(pos, key, value)


def key_age_warnings(mesh: Mesh, alloc: dict[str, Allocation], names: list[str],
                     today: dt.date) -> list[str]:
    """Keys past network.key_max_age_days, and keys that reach it within two weeks."""
    limit = mesh.network.key_max_age_days
    out = []
    for name in names if limit else ():
        since = alloc[name].key_date
        if since is None or not mesh.nodes[name].managed:
            continue
        age = (today - since).days
        fix = f"rotate it: ansible-playbook playbooks/rotate.yml -l {name}"
        if age >= limit:
            out.append(f"{name}: its key is {age} days old, past network.key_max_age_days "
                       f"({limit}); {fix}")
        elif age >= limit - KEY_AGE_NOTICE_DAYS:
            due = since + dt.timedelta(days=limit)
            out.append(f"{name}: its key reaches network.key_max_age_days ({limit}) on {due}; "
                       f"{fix}")
    return out
