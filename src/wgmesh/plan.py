"""What a change to the mesh definition or the policy does, in names.

``wgmesh plan`` compiles two states of the inputs (a git ref or a directory, and the working
tree) and compares what they mean rather than the files: which sources (users, tags, nodes
without an owner, subnets) gain or lose which destinations and ports, which peers each host
gains or loses, which routes and exit nodes change, which nodes join, leave or expire, and
which policy tests change outcome. The access comparison is read from the resolved rules
(the same ones the filters and ``wgmesh eval`` are made from), grouped by identity, so its
cost grows with rules x identities, not with pairs of nodes.
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from wgmesh.access import Ports, access, port_text, principal, route_roles, ssh_logins
from wgmesh.build import Build
from wgmesh.errors import InputError, Problem
from wgmesh.intervals import subtract
from wgmesh.policytests import policy_test_failures

# Exit codes of `wgmesh plan` (documented in docs/gitops.md).
NO_CHANGE = 0
CHANGED = 3  # something changes, and no source gains access
WIDENED = 4  # some source gains access (or a route or exit node is added): ask for review


# The two states ---------------------------------------------------------------------
# A branch, tag, commit or revision expression (origin/main, v1.2, HEAD~1, a1b2c3): never an
# option, whatever git would make of one (--output=FILE writes a file).
REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/@{}^~+-]{0,199}", re.ASCII)


def export_ref(ref: str, repo: Path, into: Path) -> Path:
    """The tree of a git commit, written under ``into``; returns the repository's top in it.
    Nothing in the work tree or the index is touched."""
    if not REF.fullmatch(ref):
        raise InputError([Problem("--base", 0, 0, "", f"{ref[:80]!r} is neither a folder nor "
                                  "a git branch, tag or commit",
                                  "name a branch, tag or commit (e.g. origin/main) or a folder")])
    top = subprocess.run(["git", "-C", str(repo), "rev-parse", "--show-toplevel"],
                         capture_output=True, text=True, check=False)
    if top.returncode != 0:
        raise InputError([Problem(str(repo), 0, 0, "", "not in a git work tree: "
                                  + top.stderr.strip(),
                                  "pass a directory as the base instead of a ref")])
    archive = subprocess.run(["git", "-C", top.stdout.strip(), "archive", "--format=tar",
                              "--end-of-options", ref],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise InputError([Problem(str(repo), 0, 0, "", f'git ref "{ref}": '
                                  + archive.stderr.decode(errors="replace").strip(),
                                  "name a branch, tag or commit (e.g. origin/main)")])
    # tar(1), not tarfile: Debian 12's Python 3.11.2 has no extraction filters, and git
    # archive writes only the commit's files.
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return Path(top.stdout.strip())


def _ports_minus(a: Ports, b: Ports) -> Ports:
    out = {}
    for proto, ranges in a.items():
        left = subtract(ranges, b.get(proto, []))
        if left:
            out[proto] = left
    return out


@dataclass
class Change:
    """One source's gain or loss, destinations with the same ports grouped."""

    source: str
    kind: str  # gains | loses
    destinations: list[str]
    ports: list[str]  # in words: "tcp 22", "tcp * but 22", "ssh as root"
    ranges: Ports = field(default_factory=dict)  # the same as protocol -> port ranges
    logins: list[str] = field(default_factory=list)  # ssh logins gained or lost
    # The rules behind it: for a gain, the head's rules that grant it; for a loss, the base's
    # rules that granted it ("file:line (path)").
    rules: list[str] = field(default_factory=list)


def access_changes(old: dict[str, dict[str, Ports]],
                   new: dict[str, dict[str, Ports]]) -> list[Change]:
    out: list[Change] = []
    for src in sorted(set(old) | set(new)):
        for kind, a, b in (("gains", new.get(src, {}), old.get(src, {})),
                           ("loses", old.get(src, {}), new.get(src, {}))):
            grouped: dict[tuple[str, ...], list[str]] = defaultdict(list)
            ranges: dict[tuple[str, ...], Ports] = {}
            for dst in sorted(a):
                if a[dst] == b.get(dst):
                    continue
                diff = _ports_minus(a[dst], b.get(dst, {}))
                if diff:
                    key = tuple(port_text(p, diff[p]) for p in sorted(diff))
                    grouped[key].append(dst)
                    ranges[key] = {p: diff[p] for p in sorted(diff)}
            for ports, dsts in sorted(grouped.items(), key=lambda kv: kv[1]):
                out.append(Change(src, kind, dsts, list(ports), ranges=ranges[ports]))
    return out


def login_changes(old: dict, new: dict) -> list[Change]:
    out = []
    for src in sorted(set(old) | set(new)):
        for kind, a, b in (("gains", new.get(src, {}), old.get(src, {})),
                           ("loses", old.get(src, {}), new.get(src, {}))):
            grouped: dict[tuple[str, ...], list[str]] = defaultdict(list)
            for dst in sorted(a):
                diff = sorted(set(a[dst]["ssh"]) - set(b.get(dst, {}).get("ssh", ())))
                if diff:
                    grouped[tuple(f"ssh as {u}" for u in diff)].append(dst)
            for logins, dsts in sorted(grouped.items(), key=lambda kv: kv[1]):
                out.append(Change(src, kind, dsts, list(logins),
                                  logins=[u.removeprefix("ssh as ") for u in logins]))
    return out


# Everything else ------------------------------------------------------------------------
@dataclass
class Plan:
    base: str
    head: str
    joined: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)  # expire in head (were live in base)
    access: list[Change] = field(default_factory=list)
    peers: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # host -> gains/loses
    routes: list[dict] = field(default_factory=list)
    exit_nodes: list[dict] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # nodes whose public key changes
    # A machine that starts acting as someone (joins, a new key, another owner or tags):
    # node, change, as (who it acts as), reaches (the destinations it gains), widens.
    identities: list[dict] = field(default_factory=list)
    names: list[dict] = field(default_factory=list)  # the mesh domain, split DNS
    # Nodes whose SSH over the mesh starts or stops following the ssh rules: node, ssh_policy
    # ("on" or "off"). Off widens: the ssh rules no longer narrow who sshd lets log in.
    ssh_policy: list[dict] = field(default_factory=list)
    # Network settings that change every host's bundle but not who reaches what: what,
    # from, to (denied-flow logs, the key age limit).
    settings: list[dict] = field(default_factory=list)
    tests: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)  # user -> groups (either state)
    # A signed mesh (head): the manifest's state, and changes of the admins and threshold.
    signing: dict | None = None

    @property
    def widened(self) -> bool:
        """More access, or more people able to change it (an admin added, a lower threshold,
        signing switched off)."""
        s = self.signing or {}
        return (any(c.kind == "gains" for c in self.access)
                or any(i["widens"] for i in self.identities) or bool(self.names)
                or any(c["ssh_policy"] == "off" for c in self.ssh_policy)
                or any(r["change"] == "added" for r in self.routes + self.exit_nodes)
                or bool(s.get("admins_added")) or s.get("threshold_lowered", False))

    @property
    def changed(self) -> bool:
        s = self.signing or {}
        return bool(self.joined or self.left or self.expired or self.access or self.peers
                    or self.routes or self.exit_nodes or self.keys or self.tests
                    or self.identities or self.names or self.ssh_policy or self.settings
                    or s.get("admins_added") or s.get("admins_removed")
                    or s.get("threshold_from") != s.get("threshold"))

    @property
    def exit_code(self) -> int:
        return WIDENED if self.widened else CHANGED if self.changed else NO_CHANGE


def _test_outcomes(b: Build) -> dict[str, str]:
    """Policy test -> "pass" or its failure messages (in the policy's order)."""
    failed: dict[str, list[str]] = defaultdict(list)
    for p in policy_test_failures(b):
        failed[p.path].append(p.message)
    return {t.origin: "; ".join(failed[t.origin]) if failed.get(t.origin) else "pass"
            for t in [*b.policy.tests, *b.policy.ssh_tests]}


def _signing(old: Build, new: Build) -> dict | None:
    """Who may sign, before and after, and whether the head's manifest covers the head."""
    from wgmesh import signing

    if old.mesh.signing is None and new.mesh.signing is None:
        return None
    before = dict(old.mesh.signing.admins) if old.mesh.signing else {}
    after = dict(new.mesh.signing.admins) if new.mesh.signing else {}
    out = {
        "threshold_from": old.mesh.signing.threshold if old.mesh.signing else None,
        "threshold": new.mesh.signing.threshold if new.mesh.signing else None,
        "admins_added": sorted(n for n, k in after.items() if before.get(n) != k),
        "admins_removed": sorted(n for n, k in before.items() if after.get(n) != k),
        "manifest": None,
    }
    out["threshold_lowered"] = (new.mesh.signing is None or (
        old.mesh.signing is not None and out["threshold"] < out["threshold_from"]))
    if new.manifest is not None:
        body = new.manifest["manifest"]
        out["manifest"] = {"serial": body["serial"],
                           "states_inputs": not signing.check_inputs(new, new.manifest),
                           "signatures": sorted(new.manifest["signatures"]), "refused": None}
        try:
            signing.verify(new.manifest, signing.trust_of(new))
        except signing.Refused as exc:
            out["manifest"]["refused"] = str(exc)
    return out


def _gains(before: dict[str, Ports], after: dict[str, Ports]) -> list[str]:
    """What one source reaches after and did not before, in words."""
    return [f"{', '.join(c.destinations)}: {'; '.join(c.ports)}"
            for c in access_changes({"": before}, {"": after}) if c.kind == "gains"]


def _identities(old: Build, new: Build, plan: Plan, acc_old: dict, acc_new: dict) -> list:
    """Machines that act as someone they did not before: access follows identities, so a
    new device of alice's, a key swapped in, or a node given another owner or tags reaches
    what that identity may, though no rule changed. Each widens when it reaches anything
    (a join, a key) or more than before (another owner or tags)."""
    o, n = old.resolution, new.resolution
    out = []
    # A new key is all of its node to its peers: what the node reaches, and what reaches it
    # (connections to a database, logins to a server) now end at whoever holds that key.
    back = sorted((set(o.expired) - set(n.expired)) & set(n.names) - set(plan.joined))
    for change, names in (("joins", plan.joined), ("new key", plan.keys),
                          ("is no longer expired", back)):
        for name in names:
            who = principal(new, n.index[name])
            reaches = _gains({}, acc_new.get(who, {}))
            reached_by = sorted(src for src, dests in acc_new.items() if name in dests)
            out.append({"node": name, "change": change, "as": who, "was": None,
                        "reaches": reaches, "reached_by": reached_by,
                        "widens": bool(reaches or reached_by)})
    for name in sorted(set(o.names) & set(n.names)):
        was, who = principal(old, o.index[name]), principal(new, n.index[name])
        if was == who:
            continue
        # (What reaches it is by node name: the access table shows who gains it.)
        reaches = _gains(acc_old.get(was, {}), acc_new.get(who, {}))
        out.append({"node": name, "change": "acts as", "as": who, "was": was,
                    "reaches": reaches, "reached_by": [], "widens": bool(reaches)})
    return out


def _names(old: Build, new: Build) -> list[dict]:
    """Changes of name resolution: the mesh domain and split DNS. Each widens: where names
    resolve decides where traffic goes."""
    a, b = old.mesh.network, new.mesh.network
    out = []
    if a.domain != b.domain:
        out.append({"what": "mesh domain", "from": a.domain, "to": b.domain})
    before = {d: [str(x) for x in ns] for d, ns in a.split_dns}
    after = {d: [str(x) for x in ns] for d, ns in b.split_dns}
    for d in sorted(set(before) | set(after)):
        if before.get(d) != after.get(d):
            out.append({"what": f"split DNS {d}",
                        "from": ", ".join(before.get(d, [])) or None,
                        "to": ", ".join(after.get(d, [])) or None})
    return out


# Settings that change every host's bundle without touching access, and what they do.
SETTINGS = {"log_denied": "hosts log the flows their policy drops",
            "key_max_age_days": "keys older than this are reported (0: never)"}


def _settings(old: Build, new: Build) -> list[dict]:
    a, b = old.mesh.network, new.mesh.network
    return [{"what": f"network.{key}", "from": getattr(a, key), "to": getattr(b, key),
             "means": means} for key, means in SETTINGS.items()
            if getattr(a, key) != getattr(b, key)]


def compare(old: Build, new: Build, base: str, head: str) -> Plan:
    plan = Plan(base, head)
    plan.settings = _settings(old, new)
    plan.signing = _signing(old, new)
    o, n = old.resolution, new.resolution
    plan.joined = sorted(set(new.mesh.nodes) - set(old.mesh.nodes))
    plan.left = sorted(set(old.mesh.nodes) - set(new.mesh.nodes))
    plan.expired = sorted(set(n.expired) - set(o.expired) - set(plan.joined))
    rules_old: dict = {}
    rules_new: dict = {}
    acc_old, acc_new = access(old, rules_old), access(new, rules_new)
    plan.ssh_policy = [{"node": name, "ssh_policy": "on" if n.ssh_hosts >> n.index[name] & 1
                        else "off"}
                       for name in sorted(set(o.names) & set(n.names))
                       if (o.ssh_hosts >> o.index[name] ^ n.ssh_hosts >> n.index[name]) & 1]
    # Logins on a node that starts or stops running SSH policy are not gained or lost (sshd's
    # own keys decided them before, or decide them now): the ssh_policy change says so.
    toggled = {c["node"] for c in plan.ssh_policy}
    plan.access = access_changes(acc_old, acc_new) + login_changes(
        *({src: {d: c for d, c in row.items() if d not in toggled} for src, row in
           ssh_logins(build).items()} for build in (old, new)))
    for c in plan.access:
        if not c.logins:
            build, behind = (new, rules_new) if c.kind == "gains" else (old, rules_old)
            ks = sorted({k for d in c.destinations for k in behind.get((c.source, d), ())},
                        key=lambda k: build.resolution.rules[k].rule.line)
            c.rules = [f"{build.policy.path.name}:{build.resolution.rules[k].rule.line} "
                       f"({build.resolution.rules[k].rule.origin})" for k in ks]
    # Every node, devices Ansible does not manage too (their exported configuration changes).
    old_hosts, new_hosts = dict(old.hosts(filters=False)), dict(new.hosts(filters=False))
    for host in sorted(set(old_hosts) | set(new_hosts)):
        before = {p.name for p in old_hosts[host].peers} if host in old_hosts else set()
        after = {p.name for p in new_hosts[host].peers} if host in new_hosts else set()
        if host not in old_hosts or host not in new_hosts:
            continue  # a node that joins or leaves: listed as such
        if before != after:
            plan.peers[host] = {"gains": sorted(after - before), "loses": sorted(before - after)}
    r_old, r_new = route_roles(old), route_roles(new)
    for key in sorted(set(r_old) | set(r_new)):
        router, prefix = key
        if key not in r_old:
            plan.routes.append({"router": router, "prefix": prefix, "change": "added",
                                "role": r_new[key]})
        elif key not in r_new:
            plan.routes.append({"router": router, "prefix": prefix, "change": "removed",
                                "role": r_old[key]})
        elif r_old[key] != r_new[key]:
            plan.routes.append({"router": router, "prefix": prefix, "change": "role",
                                "role": f"{r_old[key]} -> {r_new[key]}"})
    e_old = {o.names[i] for i in o.exits}
    e_new = {n.names[i] for i in n.exits}
    plan.exit_nodes = ([{"node": x, "change": "added"} for x in sorted(e_new - e_old)]
                       + [{"node": x, "change": "removed"} for x in sorted(e_old - e_new)])
    for name in sorted(set(o.names) & set(n.names)):
        if (old.alloc[name].public_key and new.alloc[name].public_key
                and old.alloc[name].public_key != new.alloc[name].public_key):
            plan.keys.append(name)
        uo, un = o.nodes[o.index[name]].use_exit_node, n.nodes[n.index[name]].use_exit_node
        if uo != un:
            plan.exit_nodes.append({"node": name, "change": "uses",
                                    "from": uo, "to": un})
    plan.identities = _identities(old, new, plan, acc_old, acc_new)
    plan.names = _names(old, new)
    t_old, t_new = _test_outcomes(old), _test_outcomes(new)
    for t in sorted(set(t_old) | set(t_new), key=_origin_order):
        if t_old.get(t) != t_new.get(t):
            plan.tests.append({"test": t, "before": t_old.get(t, "absent"),
                               "after": t_new.get(t, "absent")})
    plan.warnings = [w for w in new.warnings if w not in set(old.warnings)]
    groups: dict[str, set[str]] = defaultdict(set)
    for pol in (old.policy, new.policy):
        for group, users in pol.groups.items():
            for user in users:
                groups[user].add(group)
    plan.groups = {u: sorted(g) for u, g in sorted(groups.items())
                   if any(c.source == u for c in plan.access)}
    return plan


def _origin_order(origin: str) -> tuple:
    head, _, rest = origin.partition("[")
    return (head, int(rest.rstrip("]")) if rest.rstrip("]").isdigit() else 0)
