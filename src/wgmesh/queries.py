"""What a query names (``wgmesh eval``, ``why``, the policy's tests): nodes, host aliases and
addresses, or every device of a user, group or tag, as endpoints the evaluator judges."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from wgmesh import grammar
from wgmesh.compile.evaluate import Endpoint, Evaluator
from wgmesh.compile.resolve import Resolution
from wgmesh.errors import did_you_mean
from wgmesh.lock import Lock
from wgmesh.mesh import Mesh
from wgmesh.policy import Policy
from wgmesh.selectors import Kind, Selector


class Compiled(Protocol):
    """A compiled mesh as queries and the policy's tests read it (build.Build is one; this
    stage comes before build, which runs the tests)."""

    mesh: Mesh
    policy: Policy
    lock: Lock
    today: dt.date | None

    @property
    def resolution(self) -> Resolution: ...

    @property
    def evaluator(self) -> Evaluator: ...


def endpoints(b: Compiled, sel: Selector) -> list[Endpoint]:
    """Every node a test selector names, or one identity standing for it when none does."""
    res = b.resolution
    if sel.kind is Kind.PREFIX:
        return [res.endpoint_of(str(sel.net.network_address))]
    mask = res.masks(sel)[4]
    if mask:
        return [res.endpoint_of(res.names[i]) for i in range(len(res.names)) if mask >> i & 1]
    if sel.kind is Kind.TAG:
        return [Endpoint(None, tags=frozenset({sel.name}))]
    if sel.kind is Kind.GROUP:
        return [Endpoint(None, user=u) for u in b.policy.groups.get(sel.name, ())]
    if sel.kind is Kind.TAGGED:
        return [Endpoint(None, tags=frozenset({"tag:*"}))]
    if sel.kind is Kind.USER:
        return [Endpoint(None, user=sel.name)]
    return []  # everyone, every member or a domain's users: no device to test


def parse_query_endpoint(b: Compiled, text: str) -> Endpoint:
    """A node name, host alias or IP address from an eval query."""
    res = b.resolution
    if text in res.index or text in b.policy.hosts:
        return res.endpoint_of(text)
    if grammar.ip_address(text) is None:
        raise ValueError(f'"{text}" is not a node, host alias or IP address')
    return res.endpoint_of(text)


def known_users(b: Compiled) -> set[str]:
    """Every user the inputs name: node owners, group members, users in rules and tagOwners."""
    users = {n.owner for n in b.mesh.nodes.values() if n.owner}
    users.update(u for members in b.policy.groups.values() for u in members)
    selectors = [sel for r in (*b.policy.rules, *b.policy.ssh) for sel in (*r.src, *r.dst)]
    selectors += [sel for owners in b.policy.tag_owners.values() for sel in owners]
    users.update(sel.name for sel in selectors if sel.kind is Kind.USER)
    return users


def unknown_user_hint(users: set[str], text: str) -> str | None:
    """For a user none of ``users`` (``known_users``) is, a typo most likely: what it stands
    for, and the closest user that exists."""
    if not grammar.matches(grammar.USER, text) or text in users:
        return None
    return (f'no node, group or rule names the user "{text}" (it stands for a user with no '
            f"device); {did_you_mean(text, users)}")


def query_endpoints(b: Compiled, text: str) -> list[Endpoint]:
    """What an eval query names: one node, host alias or address, or every device of a
    user, group or tag (an identity with no device stands for itself)."""
    if text in b.resolution.index or text in b.policy.hosts or grammar.ip_address(text):
        return [parse_query_endpoint(b, text)]
    if text.startswith("tag:"):
        if text not in b.policy.tag_owners and not any(text in n.tags
                                                       for n in b.mesh.nodes.values()):
            raise ValueError(f'tag "{text}" is not in the policy\'s tagOwners')
        sel = Selector(Kind.TAG, text, text)
    elif text.startswith("group:"):
        if text not in b.policy.groups:
            raise ValueError(f'group "{text}" is not in the policy\'s groups')
        sel = Selector(Kind.GROUP, text, text)
    elif grammar.matches(grammar.USER, text):
        sel = Selector(Kind.USER, text, text)
    else:
        raise ValueError(f'"{text}" is not a node, user, group, tag, host alias or IP address')
    found = endpoints(b, sel)
    if not found:
        raise ValueError(f'"{text}" names no device and no user')
    return found


