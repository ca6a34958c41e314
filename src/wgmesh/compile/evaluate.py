"""Decide single packets from identities, the way the policy reads.

The evaluator does not look at the filter sets the compiler builds: it answers from the
policy's rules and the nodes' owners, tags and addresses alone, so that tests can check the
rendered sets against it (``wgmesh eval`` and the policy's ``tests`` use it too).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from wgmesh.compile.resolve import Endpoint
from wgmesh.intervals import in_ranges
from wgmesh.policy import ICMP, PORT_PROTOS
from wgmesh.selectors import Kind, Selector

if TYPE_CHECKING:
    from wgmesh.compile.resolve import Resolution


@dataclass(frozen=True)
class Verdict:
    allow: bool
    rule: str | None = None
    line: int = 0
    note: str = ""  # why a packet a network rule allows is refused anyway
    # Which rules answer: "network" (acls, grants), or "ssh" for port 22 of a node that runs
    # SSH policy (then ssh_rule is the ssh rule that lets the source in, if one does).
    answered_by: str = "network"
    ssh_rule: str | None = None


class Evaluator:
    def __init__(self, res: Resolution):
        self.res = res
        self.groups = res.policy.groups

    def src_matches(self, sel: Selector, ep: Endpoint) -> bool:
        if sel.kind is Kind.DANGER_ALL:
            return True
        if sel.kind is Kind.ALL:
            if ep.node is not None or ep.addr is None:
                return True  # every node, and any identity (a user with no device yet)
            f = ep.addr.version
            return in_ranges(int(ep.addr), self.res.pools[f] + self.res.all_routes[f])
        return self._identity_or_prefix(sel, ep)

    def _identity_or_prefix(self, sel: Selector, ep: Endpoint) -> bool:
        if sel.kind in (Kind.PREFIX, Kind.IPSET):
            return ep.addr is not None and in_ranges(
                int(ep.addr), self.res.addresses(sel)[ep.addr.version])
        if ep.node is None and ep.user is None and not ep.tags:
            return False  # an address outside the mesh has no identity
        return sel.matches_identity(ep.user, ep.tags, self.groups)

    def dst_matches(self, sel: Selector, ep: Endpoint, src: Endpoint) -> bool:
        if sel.kind is Kind.ALL:
            return True
        if sel.kind is Kind.INTERNET:
            return (ep.node is None and ep.addr is not None
                    and in_ranges(int(ep.addr), self.res.internet[ep.addr.version]))
        if sel.kind is Kind.SELF:
            return (ep.node is not None and not ep.tags and not src.tags and src.user is not None
                    and ep.user == src.user)
        return self._identity_or_prefix(sel, ep)

    def check(self, src: Endpoint, dst: Endpoint, proto: int, port: int | None) -> Verdict:
        """What the filters do with the packet: the network rules, and on port 22 of a node
        that runs SSH policy the ssh rules too."""
        verdict = self.network(src, dst, proto, port)
        if not (proto == 6 and port == self.res.SSH_PORT and dst.node is not None):
            return verdict
        i = self.res.index[dst.node]
        if not self.res.ssh_hosts >> i & 1:
            if verdict.allow and self.res.ssh_named >> i & 1:
                return replace(verdict, note=f"{dst.node} does not run SSH policy "
                               "(ssh_policy): the network rules alone decide port 22")
            return verdict
        if not verdict.allow:
            return replace(verdict, answered_by="ssh")
        ssh = self.ssh_rule(src, dst)
        if ssh is None:
            return Verdict(False, note=f"{verdict.rule} allows it, but {dst.node} runs SSH "
                           "policy: port 22 needs an ssh rule too", answered_by="ssh")
        return replace(verdict, answered_by="ssh", ssh_rule=ssh)

    def ssh_rule(self, src: Endpoint, dst: Endpoint) -> str | None:
        """The first ssh rule that lets node ``src`` log in to node ``dst``, read from the
        selectors (not the compiler's masks)."""
        if src.node is None or dst.node is None or src.node == dst.node:
            return None
        return next((r.origin for r in self._ssh_rules(src, dst)), None)

    def _ssh_rules(self, src: Endpoint, dst: Endpoint):
        """The ssh rules that name src as source and dst as destination, in policy order."""
        return (r for r in self.res.policy.ssh
                if any(self.src_matches(s, src) for s in r.src)
                and any(self._ssh_dst(d, dst, src) for d in r.dst))

    def ssh_logins(self, src: Endpoint, dst: Endpoint) -> tuple[set[str], bool]:
        """The logins src may use on dst, and whether every non-root one is allowed, read
        from the rules' selectors; for a node or an identity with no device."""
        logins: set[str] = set()
        nonroot = False
        for r in self._ssh_rules(src, dst):
            named, any_but_root = r.logins(src.user, bool(src.tags))
            logins |= named
            nonroot |= any_but_root
        return logins, nonroot

    def _ssh_dst(self, sel: Selector, dst: Endpoint, src: Endpoint) -> bool:
        if sel.kind is Kind.SELF:
            return (not dst.tags and not src.tags and src.user is not None
                    and dst.user == src.user)
        if sel.kind is Kind.USER:
            return not dst.tags and dst.user == sel.name
        return sel.matches_identity(dst.user, dst.tags, self.groups)

    def network(self, src: Endpoint, dst: Endpoint, proto: int, port: int | None) -> Verdict:
        if (src.addr is not None and dst.addr is not None
                and src.addr.version != dst.addr.version):
            return Verdict(False)
        for rd in self.res.rules:
            r = rd.rule
            if not any(self.src_matches(s, src) for s in r.src):
                continue
            if not any(self.dst_matches(d, dst, src) for d in r.dst):
                continue
            if proto in ICMP:
                return Verdict(True, r.origin, r.line)  # echo follows any relation
            for pp in r.ip:
                if proto in pp.protos and (proto not in PORT_PROTOS or any(
                        lo <= (port or 0) <= hi for lo, hi in pp.ports)):
                    return Verdict(True, r.origin, r.line)
        return Verdict(False)
