"""Tailscale-format policy: parse, validate (every problem at once) and normalise.

Validation is a step of its own that collects every problem with its line and column; what
comes out is plain data (rules with selectors and protocol/port sets) for the compiler.
Semantics follow Tailscale's control plane; differences are listed in docs/policy.md.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wgmesh import grammar, hujson, limits
from wgmesh.errors import InputError, Problem, did_you_mean, read_text
from wgmesh.selectors import ALL, AUTOGROUP_KINDS, Kind, Selector

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOLS = {
    "icmp": 1, "igmp": 2, "ipv4": 4, "ip-in-ip": 4, "tcp": 6, "egp": 8, "igp": 9, "udp": 17,
    "gre": 47, "esp": 50, "ah": 51, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132, "fc": 133,
}
DEFAULT_PROTOS = frozenset({6, 17, 1, 58})  # no proto: TCP, UDP, ICMP, ICMPv6
PORT_PROTOS = frozenset({6, 17, 132})
ALL_PORTS = ((0, 65535),)
ICMP = frozenset({1, 58})

TOP_KEYS = {"groups", "hosts", "ipsets", "tagOwners", "acls", "grants", "autoApprovers", "ssh",
            "tests", "sshTests", "nodeAttrs", "randomizeClientPort"}
AUTOGROUPS_SRC = {"autogroup:member", "autogroup:tagged", "autogroup:danger-all"}
AUTOGROUPS_DST = {"autogroup:member", "autogroup:tagged", "autogroup:self", "autogroup:internet"}
UNSUPPORTED_AUTOGROUPS = {"autogroup:admin", "autogroup:owner", "autogroup:it-admin",
                          "autogroup:network-admin", "autogroup:billing-admin",
                          "autogroup:auditor", "autogroup:shared"}
DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class ProtoPorts:
    protos: frozenset[int]
    ports: tuple[tuple[int, int], ...] = ALL_PORTS


@dataclass(frozen=True)
class Rule:
    """One normalised network rule: any src may reach any dst with any of ``ip``."""

    origin: str  # "acls[2]", for "the rule that allowed it"
    line: int
    src: tuple[Selector, ...]
    dst: tuple[Selector, ...]
    ip: tuple[ProtoPorts, ...]
    via: tuple[str, ...] = ()  # tags of the routers and exit nodes that may carry dst


@dataclass(frozen=True)
class SshRule:
    """One ssh rule: who (src) may log in to which nodes (dst) as which local users."""

    origin: str  # "ssh[0]"
    line: int
    src: tuple[Selector, ...]
    dst: tuple[Selector, ...]
    users: tuple[str, ...]  # logins, "autogroup:nonroot", "localpart:*@domain"

    def logins(self, owner: str | None, tagged: bool) -> tuple[set[str], bool]:
        """What ``users`` lets a source with this owner (and tags or not) log in as: the
        logins named, and whether every non-root login is allowed (autogroup:nonroot).
        localpart:*@domain gives the owner's local part when the owner is of that domain
        (and the local part is a valid login)."""
        logins: set[str] = set()
        nonroot = False
        for user in self.users:
            if user == "autogroup:nonroot":
                nonroot = True
            elif user.startswith("localpart:*@"):
                local, _, domain = (owner or "").partition("@")
                if owner and not tagged and domain == user.removeprefix("localpart:*@") \
                        and grammar.matches(grammar.LOGIN, local):
                    logins.add(local)
            else:
                logins.add(user)
        return logins, nonroot


@dataclass(frozen=True)
class SshTest:
    """An sshTests entry: src may (accept) or may not (deny) log in as these users on every
    node of dst."""

    origin: str  # "sshTests[0]"
    line: int
    src: Selector
    dst: tuple[str, ...]  # node names, tags, users, autogroup:self/member/tagged
    accept: tuple[str, ...]
    deny: tuple[str, ...]


@dataclass(frozen=True)
class PolicyTest:
    origin: str
    line: int
    src: Selector
    proto: str | None
    accept: tuple[str, ...]
    deny: tuple[str, ...]


@dataclass
class Policy:
    path: Path
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hosts: dict[str, IPNet] = field(default_factory=dict)
    # ipset name -> operations in order: (add?, a PREFIX, INTERNET or IPSET selector)
    ipsets: dict[str, tuple[tuple[bool, Selector], ...]] = field(default_factory=dict)
    tag_owners: dict[str, tuple[Selector, ...]] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    allow_all: bool = False
    auto_routes: list[tuple[IPNet, tuple[Selector, ...]]] = field(default_factory=list)
    auto_exit: tuple[Selector, ...] = ()
    ssh: list[SshRule] = field(default_factory=list)
    tests: list[PolicyTest] = field(default_factory=list)
    ssh_tests: list[SshTest] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    doc: hujson.Document | None = None

    def where(self, path: tuple) -> tuple[int, int]:
        return self.doc.where(path) if self.doc else (0, 0)


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    if not path.exists():
        raise InputError([Problem(str(path), 0, 0, "", "cannot read policy: No such file or "
                                  "directory",
                                  "check mesh.yml's policy: path, or pass --policy")])
    return parse_policy(read_text(path, str(path), limits.MAX_POLICY_BYTES), str(path))


def parse_policy(text: str, name: str = "<policy>") -> Policy:
    doc = hujson.loads(text, name)
    return _Validator(doc).run()


def parse_ports(text: str) -> tuple[tuple[int, int], ...] | str:
    """'*', '22', '80-443', '22,80,8000-8100' -> ranges, or an error message."""
    if text == "*":
        return ALL_PORTS
    out = []
    for part in text.split(","):
        lo_s, _, hi_s = part.partition("-")
        if not grammar.matches(grammar.DIGITS, lo_s):
            return f'port range "{part}": invalid first integer'
        if _ and not grammar.matches(grammar.DIGITS, hi_s):
            return f'port range "{part}": invalid last integer'
        lo, hi = int(lo_s), int(hi_s or lo_s)
        if lo == 0:
            return f"port range \"{part}\": first port must be >0, or use '*' for wildcard"
        if hi > 65535 or lo > 65535:
            return f'port range "{part}": port must be at most 65535'
        if hi < lo:
            return f'port range "{part}": last port is below the first'
        out.append((lo, hi))
    return tuple(sorted(out))


def parse_proto(value: Any) -> int | str:
    """An IANA protocol name or number -> number, or an error message."""
    if not isinstance(value, str):
        return "proto must be a protocol name or number as text"
    v = value.lower()
    if v in PROTOCOLS:
        return PROTOCOLS[v]
    if grammar.matches(grammar.DIGITS, v):
        if len(v) > 1 and v.startswith("0"):
            return f'leading 0 not permitted in protocol number "{value}"'
        if v == "0":  # Tailscale refuses it: 0 stands for "no protocol given"
            return 'proto "0" is not a protocol; leave proto out for TCP, UDP and ICMP'
        if int(v) <= 255:
            return int(v)
    return f'proto name "{value}" not known; use tcp, udp, icmp, ipv6-icmp, sctp, ... or 1-255'


def split_hostport(text: str) -> tuple[str, str] | None:
    """'selector:ports' split on the last colon; '[v6]:ports' also accepted (brackets only
    around an IPv6 address, as Tailscale's parser has them)."""
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]+)\](/[0-9]+)?:(.+)", text)
        if not m or grammar.ip_address(m.group(1), 6) is None:
            return None
        return m.group(1) + (m.group(2) or ""), m.group(3)
    sel, colon, ports = text.rpartition(":")
    return (sel, ports) if colon and sel else None


class _Validator:
    def __init__(self, doc: hujson.Document):
        self.doc = doc
        self.problems: list[Problem] = []
        self.policy = Policy(Path(doc.name), doc=doc)

    def err(self, path: tuple, message: str, fix: str = "") -> None:
        line, col = self.doc.where(path)
        self.problems.append(Problem(self.doc.name, line, col, _jpath(path), message, fix))

    def run(self) -> Policy:
        data = self.doc.value
        if not isinstance(data, dict):
            self.err((), "a policy must be a JSON object")
            raise InputError(self.problems)
        for key in data:
            if key not in TOP_KEYS:
                self.err((key,), f'unknown field "{key}"', did_you_mean(key, TOP_KEYS))
        for key in ("nodeAttrs",):
            if key in data:
                self.err((key,), f'"{key}" is not supported by wgmesh',
                         "remove it; see docs/policy.md for what a static mesh supports")
        if "randomizeClientPort" in data:
            if not isinstance(data["randomizeClientPort"], bool):
                self.err(("randomizeClientPort",), "randomizeClientPort is true or false")
            elif data["randomizeClientPort"]:
                # Peers' endpoints are rendered with each node's port, so ports are fixed.
                self.policy.warnings.append(
                    "randomizeClientPort has no effect: listen ports come from mesh.yml "
                    "(network.listen_port, a node's listen_port), since peers are configured "
                    "with them")
        self.groups(data.get("groups", {}))
        self.hosts(data.get("hosts", {}))
        self.ipsets(data.get("ipsets", {}))
        self.tag_owners(data.get("tagOwners", {}))
        if "acls" not in data and "grants" not in data:
            # Tailscale: a policy with neither rule list allows everything.
            self.policy.allow_all = True
            self.policy.rules.append(Rule("(no acls or grants: allow all)", 0, (ALL,), (ALL,),
                                          (ProtoPorts(DEFAULT_PROTOS),)))
        self.acls(data.get("acls", []))
        self.grants(data.get("grants", []))
        self.auto_approvers(data.get("autoApprovers", {}))
        self.ssh(data.get("ssh", []))
        self.tests(data.get("tests", []))
        self.ssh_tests(data.get("sshTests", []))
        if self.problems:
            raise InputError(self.problems)
        return self.policy

    # Sections ------------------------------------------------------------------------
    def _object(self, value: Any, path: tuple) -> dict:
        if not isinstance(value, dict):
            self.err(path, "must be an object")
            return {}
        return value

    def _list(self, value: Any, path: tuple, what: str = "a list") -> list:
        if not isinstance(value, list):
            self.err(path, f"must be {what}")
            return []
        return value

    def _fields(self, obj: dict, path: tuple, allowed: set[str], required: set[str] = frozenset()):
        for key in obj:
            if key not in allowed and not key.startswith("#"):
                self.err((*path, key), f'unknown field "{key}"', did_you_mean(key, allowed))
        for key in sorted(required - set(obj)):
            self.err(path, f'missing field "{key}"')

    def groups(self, value: Any) -> None:
        for name, members in self._object(value, ("groups",)).items():
            path = ("groups", name)
            if not grammar.matches(grammar.GROUP, name):
                self.err(path, f'group name "{name}" must start with "group:"',
                         'e.g. "group:engineers"')
                continue
            out = []
            for i, m in enumerate(self._list(members, path, "a list of users")):
                if isinstance(m, str) and m.startswith("group:"):
                    self.err((*path, i), f'"{m}": group members cannot be recursive',
                             "list the users themselves")
                elif not grammar.matches(grammar.USER, m):
                    self.err((*path, i), f"group members must be users, not {m!r}",
                             "write users in e-mail form: alice@example.com")
                else:
                    out.append(m)
            self.policy.groups[name] = tuple(out)

    def hosts(self, value: Any) -> None:
        for name, addr in self._object(value, ("hosts",)).items():
            path = ("hosts", name)
            if not grammar.matches(grammar.HOST_ALIAS, name):
                self.err(path, f'host name "{name}" is not valid',
                         "use letters, digits, '.', '_' and '-' (no ':' or '@')")
                continue
            self.policy.hosts[name] = grammar.ip_network(addr)
            if self.policy.hosts[name] is None:
                self.err(path, f'hostname contains invalid IP address: "{addr}"',
                         "give an IP address or a CIDR prefix without host bits")

    def ipsets(self, value: Any) -> None:
        """Named address sets: "add <target>" / "remove <target>" in order, where a target
        is an address, a prefix, a host alias, autogroup:internet or another IP set (no
        cycles); plain targets only in a set that only adds."""
        raw = self._object(value, ("ipsets",))
        for name in raw:
            if not grammar.matches(grammar.IPSET, name):
                self.err(("ipsets", name), f'IP set name "{name}" must start with "ipset:"',
                         'e.g. "ipset:office"')
        for name in raw:
            if name in self.policy.ipsets or not grammar.matches(grammar.IPSET, name):
                continue
            self._ipset(name, raw, ())

    def _ipset(self, name: str, raw: dict, stack: tuple) -> None:
        path = ("ipsets", name)
        if name in stack:
            self.err(path, f"IP set {name} refers to itself through "
                     + " -> ".join((*stack, name)), "remove the circular reference")
        elif len(stack) >= limits.MAX_DEPTH:
            self.err(path, f"IP sets nest deeper than {limits.MAX_DEPTH} levels")
        if name in stack or len(stack) >= limits.MAX_DEPTH:
            self.policy.ipsets[name] = ()
            return
        items = self._list(raw[name], path, "a list of operations")
        removes = any(isinstance(i, str) and i.startswith("remove ") for i in items)
        ops = []
        for j, item in enumerate(items):
            where = (*path, j)
            if not isinstance(item, str):
                self.err(where, f"IP set operations are text, not {item!r}")
                continue
            verb, _, target = item.partition(" ")
            if verb not in ("add", "remove"):
                verb, target = "add", item
                if removes:
                    self.err(where, f'"{item}": write "add {item}"',
                             "an IP set that removes needs add or remove before every target")
                    continue
            if target == "autogroup:internet":
                sel = Selector(Kind.INTERNET, target)
            elif target.startswith("ipset:"):
                if target not in raw:
                    self.err(where, f'IP set "{target}" is not defined',
                             did_you_mean(target, raw))
                    continue
                if target not in self.policy.ipsets or target in stack:
                    self._ipset(target, raw, (*stack, name))
                sel = Selector(Kind.IPSET, target, target)
            elif target in self.policy.hosts:
                sel = Selector(Kind.PREFIX, target, net=self.policy.hosts[target])
            elif (net := grammar.ip_network(target, strict=False)) is not None:
                sel = Selector(Kind.PREFIX, str(net), net=net)
            else:
                self.err(where, f'"{target}" is not an address, prefix, host, '
                         "autogroup:internet or IP set",
                         "IP sets hold addresses only: no users, groups or tags")
                continue
            ops.append((verb == "add", sel))
        self.policy.ipsets[name] = tuple(ops)

    def tag_owners(self, value: Any) -> None:
        owners_raw = self._object(value, ("tagOwners",))
        for tag in owners_raw:
            if not grammar.matches(grammar.TAG, tag):
                self.err(("tagOwners", tag),
                         'tag names must start with a letter, after "tag:"',
                         'e.g. "tag:prod-db"')
        for tag, owners in owners_raw.items():
            if not grammar.matches(grammar.TAG, tag):
                continue
            path = ("tagOwners", tag)
            out = []
            for i, o in enumerate(self._list(owners, path, "a list of owners")):
                if not isinstance(o, str):
                    self.err((*path, i), f"owners must be text, not {o!r}")
                elif o.startswith("tag:"):
                    if o not in owners_raw:
                        self.err((*path, i), f'tag "{tag}" references undefined tag "{o}"',
                                 f'declare "{o}" in tagOwners')
                    out.append(Selector(Kind.TAG, o, o))
                elif o.startswith("group:"):
                    if o not in self.policy.groups:
                        self.err((*path, i), f'group not defined in policy: "{o}"',
                                 "declare it under groups")
                    out.append(Selector(Kind.GROUP, o, o))
                elif o == "autogroup:member":
                    out.append(Selector(Kind.MEMBER, o))
                elif grammar.matches(grammar.USER, o):
                    out.append(Selector(Kind.USER, o, o))
                else:
                    self.err((*path, i), f"tag owners are users, groups or tags, not {o!r}")
            self.policy.tag_owners[tag] = tuple(out)

    def selector(self, sel: Any, path: tuple, side: str) -> Selector | None:
        """Check one src/dst selector; returns its typed form, or None after reporting why."""
        if not isinstance(sel, str) or not sel:
            self.err(path, f"selectors are non-empty text, not {sel!r}")
            return None
        if sel == "*":
            return ALL
        if sel.startswith("tag:"):
            if sel not in self.policy.tag_owners:
                self.err(path, f'{side}="{sel}": tag not found: "{sel}"',
                         f'declare it in tagOwners, e.g. "{sel}": ["group:admins"]')
                return None
            return Selector(Kind.TAG, sel, sel)
        if sel.startswith("group:"):
            if sel not in self.policy.groups:
                self.err(path, f'group not defined in policy: "{sel}"',
                         did_you_mean(sel, self.policy.groups))
                return None
            return Selector(Kind.GROUP, sel, sel)
        if sel.startswith("autogroup:"):
            allowed = AUTOGROUPS_SRC if side == "src" else AUTOGROUPS_DST
            if sel in allowed:
                return Selector(AUTOGROUP_KINDS[sel], sel)
            if sel == "autogroup:self" and side == "src":
                self.err(path, '"autogroup:self" not valid on the src side of a rule',
                         "use autogroup:self as a destination")
            elif sel == "autogroup:internet" and side == "src":
                self.err(path, "autogroup:internet can only be used in ACL destinations")
            elif sel == "autogroup:danger-all":
                self.err(path, "cannot use autogroup:danger-all as a dst", 'use "*"')
            elif sel == "autogroup:nonroot":
                self.err(path, "autogroup:nonroot is only valid in ssh users",
                         "it names logins other than root, not devices")
            elif sel in UNSUPPORTED_AUTOGROUPS:
                self.err(path, f'"{sel}" is not supported without a coordination server',
                         "see docs/policy.md; use groups instead")
            else:
                self.err(path, f'invalid autogroup: got "{sel}"',
                         "expected one of: " + ", ".join(sorted(AUTOGROUPS_DST)))
            return None
        if sel.startswith("user:*@"):
            domain = sel.removeprefix("user:*@")
            if not grammar.matches(grammar.DOMAIN, domain):
                self.err(path, f'"{sel}" is not a domain wildcard', 'e.g. "user:*@example.com"')
                return None
            return Selector(Kind.DOMAIN, sel, domain)
        if "@" in sel:
            if not grammar.matches(grammar.USER, sel):
                self.err(path, f'"{sel}" is not a user', "write users as alice@example.com")
                return None
            return Selector(Kind.USER, sel, sel)
        if sel in self.policy.hosts:
            return Selector(Kind.PREFIX, sel, net=self.policy.hosts[sel])
        if sel.startswith("ipset:"):
            if sel not in self.policy.ipsets:
                self.err(path, f'IP set "{sel}" is not defined',
                         did_you_mean(sel, self.policy.ipsets))
                return None
            return Selector(Kind.IPSET, sel, sel)
        net = grammar.ip_network(sel, strict=False)
        if net is None:
            self.err(path, f'{side} "{sel}" is not a user, group, tag, autogroup, host or IP',
                     did_you_mean(sel, [*self.policy.hosts, *self.policy.groups,
                                        *self.policy.tag_owners]))
            return None
        if net.prefixlen == 0 and side == "dst":
            self.err(path, f'dst "{sel}": to allow all IP addresses, use "*" or '
                     '"autogroup:internet"')
            return None
        return Selector(Kind.PREFIX, str(net), net=net)

    def _srcs(self, rule: dict, path: tuple) -> tuple[Selector, ...]:
        out = []
        for i, s in enumerate(self._list(rule.get("src", []), (*path, "src"))):
            sel = self.selector(s, (*path, "src", i), "src")
            if sel:
                out.append(sel)
        return tuple(out)

    def _check_self(self, src: tuple[Selector, ...], dsts: list[Selector], path: tuple,
                    grant: bool):
        if not any(d.kind is Kind.SELF for d in dsts):
            return
        users = (Kind.GROUP, Kind.MEMBER, Kind.USER, Kind.DOMAIN)
        bad = [str(s) for s in src if not (s.kind in users or (s.kind is Kind.ALL
                                                               and not grant))]
        if bad:
            self.err((*path, "src"), "autogroup:self can only be used with users, groups, or "
                     "supported autogroups", f"remove {', '.join(bad)} from this rule's src")

    def acls(self, value: Any) -> None:
        for i, rule in enumerate(self._list(value, ("acls",))):
            path = ("acls", i)
            if not isinstance(rule, dict):
                self.err(path, "an acl is an object with action, src and dst")
                continue
            self._fields(rule, path, {"action", "src", "dst", "proto"}, {"action", "src", "dst"})
            action = rule.get("action")
            if action is not None and action != "accept":
                self.err((*path, "action"), f'action="{action}" is not supported',
                         'the only action is "accept"; access is denied by default')
            protos = DEFAULT_PROTOS
            if "proto" in rule:
                p = parse_proto(rule["proto"])
                if isinstance(p, str):
                    self.err((*path, "proto"), p)
                    continue
                protos = frozenset({p})
            src = self._srcs(rule, path)
            by_ports: dict[tuple, list[Selector]] = {}
            for j, d in enumerate(self._list(rule.get("dst", []), (*path, "dst"))):
                dpath = (*path, "dst", j)
                split = split_hostport(d) if isinstance(d, str) else None
                if split is None and isinstance(d, str) and d.startswith("["):
                    self.err(dpath, f'dst="{d}": square brackets are only valid around IPv6 '
                             "addresses", 'e.g. "[fd7a:115c:a1e0::1]:22" or "192.0.2.1:22"')
                    continue
                if split is None:
                    tail = d.rpartition(":")[2] if isinstance(d, str) else d
                    self.err(dpath, f'dst="{d}": port range "{tail}": invalid first integer',
                             'a dst needs ports: "tag:web:443", "group:x:*"')
                    continue
                sel_text, port_text = split
                ports = parse_ports(port_text)
                if isinstance(ports, str):
                    self.err(dpath, f'dst="{d}": {ports}')
                    continue
                if ports != ALL_PORTS and "proto" in rule and not protos <= PORT_PROTOS:
                    self.err(dpath, f'dst="{d}": protocol does not support specific ports',
                             'use ":*" with this proto')
                    continue
                sel = self.selector(sel_text, dpath, "dst")
                if sel:
                    by_ports.setdefault(ports, []).append(sel)
            self._check_self(src, [s for v in by_ports.values() for s in v], path, grant=False)
            line = self.doc.where(path)[0]
            for ports, dsts in by_ports.items():
                self.policy.rules.append(
                    Rule(f"acls[{i}]", line, src, tuple(dsts), (ProtoPorts(protos, ports),)))

    def grants(self, value: Any) -> None:
        for i, rule in enumerate(self._list(value, ("grants",))):
            path = ("grants", i)
            if not isinstance(rule, dict):
                self.err(path, "a grant is an object with src, dst and ip")
                continue
            self._fields(rule, path, {"src", "dst", "ip", "app", "via", "srcPosture"},
                         {"src", "dst"})
            if "srcPosture" in rule:
                self.err((*path, "srcPosture"), 'grants: "srcPosture" is not supported '
                         "(device posture needs a coordination server)", "see docs/policy.md")
            via = self._via(rule.get("via", []), (*path, "via"))
            # An application capability grants no network access by itself (as in
            # Tailscale): checked for form, then it has no effect on peers or filters.
            if "app" in rule:
                self._app(rule["app"], (*path, "app"))
                self.policy.warnings.append(
                    f"{Path(self.doc.name).name}:{self.doc.where(path)[0]}: grants[{i}]: app "
                    "capabilities are not enforced by wgmesh (they give no network access)")
            ips = rule.get("ip")
            if not ips and not rule.get("app"):
                self.err(path, "ip and app can not both be empty",
                         'add "ip": ["*"] or a list such as ["tcp:443"]')
            specs = []
            for j, spec in enumerate(self._list(ips or [], (*path, "ip"))):
                parsed = self._ip_spec(spec, (*path, "ip", j))
                if parsed:
                    specs.append(parsed)
            src = self._srcs(rule, path)
            dsts = []
            for j, d in enumerate(self._list(rule.get("dst", []), (*path, "dst"))):
                sel = self.selector(d, (*path, "dst", j), "dst")
                if sel:
                    dsts.append(sel)
            self._check_self(src, dsts, path, grant=True)
            if specs:
                self.policy.rules.append(Rule(f"grants[{i}]", self.doc.where(path)[0], src,
                                              tuple(dsts), tuple(specs), via))

    def _via(self, value: Any, path: tuple) -> tuple[str, ...]:
        """via: the tags of the routers and exit nodes that may carry the grant's dst."""
        out = []
        for j, tag in enumerate(self._list(value, path)):
            if not isinstance(tag, str) or not tag.startswith("tag:"):
                self.err((*path, j), f"via can only be a tag, not {tag!r}",
                         'e.g. "via": ["tag:router-eu"]')
            elif tag not in self.policy.tag_owners:
                self.err((*path, j), f'via: tag not found: "{tag}"',
                         f'declare it in tagOwners, e.g. "{tag}": ["group:admins"]')
            else:
                out.append(tag)
        return tuple(out)

    def _app(self, app: Any, path: tuple) -> None:
        """{"<domain>/<capability>": [{...}, ...]}: names with a domain, lists of objects."""
        if not isinstance(app, dict):
            self.err(path, f"app is an object of capability names, not {type(app).__name__}",
                     'e.g. "app": {"example.com/cap/dashboard": [{"role": "viewer"}]}')
            return
        for name, values in app.items():
            where = (*path, name)
            if not isinstance(name, str) or "/" not in name.strip("/"):
                self.err(where, f'capability name "{name}" needs a domain and a path',
                         'e.g. "example.com/cap/dashboard"')
            if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
                self.err(where, "a capability's value is a list of objects",
                         'e.g. [{"role": "viewer"}]')

    def _ip_spec(self, spec: Any, path: tuple) -> ProtoPorts | None:
        if not isinstance(spec, str):
            self.err(path, f"ip entries are text such as \"tcp:443\", not {spec!r}")
            return None
        proto_text, colon, port_text = spec.rpartition(":")
        if not colon:
            ports = parse_ports(spec)
            if isinstance(ports, str):
                self.err(path, ports, 'write "tcp:443", "udp:53", "icmp:*", "443" or "*"')
                return None
            return ProtoPorts(DEFAULT_PROTOS, ports)
        proto = parse_proto(proto_text)
        if isinstance(proto, str):
            self.err(path, proto)
            return None
        ports = parse_ports(port_text)
        if isinstance(ports, str):
            self.err(path, ports)
            return None
        if ports != ALL_PORTS and proto not in PORT_PROTOS:
            self.err(path, f'"{spec}": protocol does not support specific ports',
                     f'use "{proto_text}:*"')
            return None
        return ProtoPorts(frozenset({proto}), ports)

    def _approvers(self, values: Any, path: tuple) -> tuple[Selector, ...]:
        out = []
        for i, a in enumerate(self._list(values, path, "a list of approvers")):
            if isinstance(a, str) and (a.startswith(("tag:", "group:")) or a == "autogroup:member"
                                       or "@" in a):
                sel = self.selector(a, (*path, i), "src")
                if sel:
                    out.append(sel)
            else:
                self.err((*path, i), f"approvers are users, groups or tags, not {a!r}")
        return tuple(out)

    def auto_approvers(self, value: Any) -> None:
        obj = self._object(value, ("autoApprovers",))
        self._fields(obj, ("autoApprovers",), {"routes", "exitNode"})
        for prefix, approvers in self._object(obj.get("routes", {}),
                                              ("autoApprovers", "routes")).items():
            path = ("autoApprovers", "routes", prefix)
            net = grammar.ip_network(prefix)
            if net is None:
                self.err(path, f"not a CIDR prefix: {grammar.network_error(prefix)}")
                continue
            self.policy.auto_routes.append((net, self._approvers(approvers, path)))
        if "exitNode" in obj:
            self.policy.auto_exit = self._approvers(obj["exitNode"], ("autoApprovers",
                                                                       "exitNode"))

    def ssh(self, value: Any) -> None:
        """The ssh rules, as Tailscale validates them; "check" needs a coordination server."""
        for i, rule in enumerate(self._list(value, ("ssh",))):
            errors = len(self.problems)
            path = ("ssh", i)
            if not isinstance(rule, dict):
                self.err(path, "an ssh rule is an object")
                continue
            self._fields(rule, path, {"action", "src", "dst", "users", "checkPeriod",
                                      "acceptEnv"})
            action = rule.get("action")
            if action is None:
                self.err(path, "action must be specified", '"accept" or "check"')
            elif not isinstance(action, str) or action.strip() not in ("accept", "check"):
                self.err((*path, "action"), f'"{action}" is not a valid action',
                         'use "accept" or "check"')
            elif action.strip() == "check":
                self.err((*path, "action"), 'action "check" makes the user sign in again '
                         "through a coordination server, and wgmesh has none",
                         'use "accept": sshd still asks for the user\'s own key')
            users = rule.get("users")
            if not users:
                self.err(path, "users must be specified", 'e.g. "users": ["root", "ubuntu"]')
            else:
                for j, u in enumerate(self._list(users, (*path, "users"))):
                    if not (grammar.matches(grammar.LOGIN, u) or u == "autogroup:nonroot"
                            or grammar.matches(grammar.SSH_LOCALPART, u)):
                        self.err((*path, "users", j), f'user "{u}" is not valid',
                                 'name logins, or use "autogroup:nonroot"')
            srcs = [sel for j, s in enumerate(self._list(rule.get("src", []), (*path, "src")))
                    if (sel := self.selector(s, (*path, "src", j), "src"))]
            tagged = any(s.kind in (Kind.TAG, Kind.TAGGED) for s in srcs)
            dsts = []
            for j, d in enumerate(self._list(rule.get("dst", []), (*path, "dst"))):
                dpath = (*path, "dst", j)
                if d == "*" or (isinstance(d, str) and d in self.policy.hosts):
                    self.err(dpath, f'invalid dst "{d}"',
                             "ssh dst is a tag, a user, autogroup:self/member/tagged")
                elif sel := self.selector(d, dpath, "dst"):
                    self._ssh_dst_kind(sel, dpath, srcs, tagged)
                    dsts.append(sel)
            # Tailscale reads null as absent for these two.
            if rule.get("checkPeriod") is not None:
                self._check_period(rule, path)
            env_list = rule.get("acceptEnv")
            for j, env in enumerate(self._list([] if env_list is None else env_list,
                                               (*path, "acceptEnv"))):
                if not isinstance(env, str) or not env:
                    self.err((*path, "acceptEnv", j), "acceptEnv values cannot be empty")
            if len(self.problems) == errors:
                self.policy.ssh.append(SshRule(f"ssh[{i}]", self.doc.where(path)[0],
                                               tuple(srcs), tuple(dsts), tuple(users)))

    def _ssh_dst_kind(self, d: Selector, path: tuple, srcs: list[Selector],
                      tagged: bool) -> None:
        """What Tailscale lets SSH reach: tagged devices from anyone; user devices
        (autogroup:self/member) only from users; one user's devices only from that user."""
        if d.kind in (Kind.TAG, Kind.TAGGED):
            return
        if d.kind in (Kind.SELF, Kind.MEMBER):
            if tagged:
                self.err(path, f'tagged sources cannot ssh to "{d}" (user devices)',
                         "use users or groups as sources, or a tag as destination")
            return
        if d.kind is not Kind.USER:
            self.err(path, f'invalid dst "{d}"',
                     "ssh dst is a tag, autogroup:self/member/tagged, or the source user")
        elif srcs != [d]:
            self.err(path, f'dst "{d}" is a user\'s devices: the src must be that same user '
                     "and no one else", f'e.g. "src": ["{d}"], or use autogroup:self')

    def _check_period(self, rule: dict, path: tuple) -> None:
        period, ppath = rule["checkPeriod"], (*path, "checkPeriod")
        if rule.get("action") != "check":
            self.err(ppath, 'checkPeriod is only valid with action "check"')
        elif period == "always":
            return
        elif not isinstance(period, str) or not grammar.matches(DURATION, period.lstrip("-")):
            self.err(ppath, f'checkPeriod "{period}" is not a duration', 'e.g. "12h" or "always"')
        elif period.startswith("-"):
            self.err(ppath, f'checkPeriod "{period}" must be a positive duration')
        else:
            secs = sum(float(n) * DURATION_UNITS[u]
                       for n, _, u in re.findall(r"([0-9]+(\.[0-9]+)?)(ns|us|µs|ms|s|m|h)", period))
            if secs > 168 * 3600:
                self.err(ppath, f'checkPeriod "{period}" is above the max (168h)')

    def ssh_tests(self, value: Any) -> None:
        """sshTests: which users a source may log in as on destinations (Tailscale's form;
        "check" lists need check rules, which wgmesh refuses)."""
        for i, test in enumerate(self._list(value, ("sshTests",))):
            path = ("sshTests", i)
            if not isinstance(test, dict):
                self.err(path, "an ssh test is an object with src, dst and accept and/or deny")
                continue
            self._fields(test, path, {"src", "dst", "accept", "check", "deny"}, {"src", "dst"})
            src = test.get("src")
            if not isinstance(src, str):
                self.err((*path, "src"), "an ssh test's src is one selector (text)")
                continue
            sel = self.selector(src, (*path, "src"), "src")
            dsts = []
            for j, d in enumerate(self._list(test.get("dst", []), (*path, "dst"))):
                dpath = (*path, "dst", j)
                if not isinstance(d, str) or not d:
                    self.err(dpath, f"ssh test dst {d!r} is not a node or selector")
                elif d.startswith("tag:") and ":" in d[4:]:
                    self.err(dpath, f'SSH tests dst contains unknown tag "{d}"',
                             "name a tag without a port")
                elif d in ("autogroup:self", "autogroup:member", "autogroup:tagged") or \
                        grammar.matches(grammar.NODE_NAME, d) or (
                        d.startswith("tag:") and self.selector(d, dpath, "dst")) or \
                        grammar.matches(grammar.USER, d):
                    dsts.append(d)
                elif not d.startswith("tag:"):
                    self.err(dpath, f'ssh test dst "{d}": disallowed element',
                             "a node name, a tag, a user or autogroup:self/member/tagged")
            if test.get("check"):
                self.err((*path, "check"), "check users need a check rule, and wgmesh has no "
                         'action "check"', "test them under accept")
            lists = {}
            for key in ("accept", "deny"):
                users = list(self._list(test.get(key, []), (*path, key)))
                for j, u in enumerate(users):
                    if not isinstance(u, str) or not grammar.matches(grammar.LOGIN, u):
                        self.err((*path, key, j), f'user "{u}" is not valid', "name a login")
                lists[key] = tuple(u for u in users if isinstance(u, str))
            if not lists["accept"] and not lists["deny"] and not test.get("check"):
                self.err(path, "an ssh test needs accept or deny")
            if sel is not None:
                self.policy.ssh_tests.append(SshTest(
                    f"sshTests[{i}]", self.doc.where(path)[0], sel, tuple(dsts),
                    lists["accept"], lists["deny"]))

    def tests(self, value: Any) -> None:
        for i, test in enumerate(self._list(value, ("tests",))):
            path = ("tests", i)
            if not isinstance(test, dict):
                self.err(path, "a test is an object with src and accept and/or deny")
                continue
            self._fields(test, path, {"src", "proto", "accept", "deny"}, {"src"})
            src = test.get("src")
            if isinstance(src, list) or not isinstance(src, str):
                self.err((*path, "src"), "a test's src is one selector (text)")
                continue
            src = self.selector(src, (*path, "src"), "src")
            if src is None:
                continue
            proto = test.get("proto")
            if proto is not None:
                p = parse_proto(proto)
                if isinstance(p, str):
                    self.err((*path, "proto"), p)
                    continue
                if p in ICMP:
                    self.err((*path, "proto"), "tests cannot use icmp", "test tcp, udp or sctp")
                    continue
            if not test.get("accept") and not test.get("deny"):
                self.err(path, "a test needs accept or deny")
            lists = {}
            for key in ("accept", "deny"):
                out = []
                for j, d in enumerate(self._list(test.get(key, []), (*path, key))):
                    if self._test_dst(d, (*path, key, j)):
                        out.append(d)
                lists[key] = tuple(out)
            self.policy.tests.append(PolicyTest(f"tests[{i}]", self.doc.where(path)[0], src,
                                                proto, lists["accept"], lists["deny"]))

    def _test_dst(self, d: Any, path: tuple) -> bool:
        split = split_hostport(d) if isinstance(d, str) else None
        if split is None:
            self.err(path, f'test destination "{d}" needs host:port'
                     + (" (square brackets are only valid around IPv6 addresses)"
                        if isinstance(d, str) and d.startswith("[") else ""),
                     'e.g. "tag:db:5432"')
            return False
        host, port = split
        if grammar.port(port) is None:
            self.err(path, f'test destination "{d}": the port must be one number')
            return False
        if host.startswith(("group:", "autogroup:")) or ("@" in host):
            self.err(path, f'test destination "{d}" must be a single host',
                     "use a node name, a tag, a host alias or an IP address")
            return False
        if host.startswith("tag:"):
            return self.selector(host, path, "dst") is not None
        alias = self.policy.hosts.get(host)
        if "/" in host or (alias is not None and alias.num_addresses > 1):
            self.err(path, f'test destination "{d}" must be a single host, not a prefix'
                     + (f' (host alias "{host}" is {alias})' if alias is not None else ""))
            return False
        if not (grammar.matches(grammar.HOST_ALIAS, host) or grammar.ip_address(host)):
            self.err(path, f'test destination "{d}" is not a node, host alias or IP address')
            return False
        return True  # node name, host alias or IP: resolved against the mesh at test time


def _jpath(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if re.fullmatch(r"\w+", p)
                                                     else f'["{p}"]')
    return out.lstrip(".")
