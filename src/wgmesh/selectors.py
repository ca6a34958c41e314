"""Policy selectors in a typed form.

The policy is read once into ``Selector`` values (what kind, and the user, group, tag,
domain or prefix it names, host aliases already resolved); the compiler, the evaluator and
the policy tests then dispatch on the kind instead of parsing the text again.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


class Kind(enum.Enum):
    ALL = "*"  # every node, and every address of the mesh and its routes
    USER = "user"  # a user's untagged nodes
    DOMAIN = "domain"  # user:*@domain: every user of that domain
    GROUP = "group"
    TAG = "tag"
    MEMBER = "autogroup:member"  # every user's untagged nodes
    TAGGED = "autogroup:tagged"
    SELF = "autogroup:self"  # dst only: the source user's own untagged nodes
    INTERNET = "autogroup:internet"  # dst only: what exit nodes carry
    DANGER_ALL = "autogroup:danger-all"  # src only: any address at all
    PREFIX = "prefix"  # an address, a prefix or a host alias
    IPSET = "ipset"  # a named address set (policy ipsets)


@dataclass(frozen=True)
class Selector:
    kind: Kind
    text: str  # as written in the policy, for messages
    name: str | None = None  # the user, domain, group or tag
    net: IPNet | None = None  # PREFIX: the address or prefix

    def __str__(self) -> str:
        return self.text

    def matches_identity(self, user: str | None, tags: frozenset[str],
                         groups: dict[str, tuple[str, ...]]) -> bool:
        """Whether a node (or a user with no device) with this owner and these tags is
        named; False for kinds that name no identity. Tags override ownership, as in
        Tailscale."""
        k = self.kind
        if k is Kind.TAG:
            return self.name in tags
        if k is Kind.TAGGED:
            return bool(tags)
        if tags or user is None:
            return False
        if k is Kind.USER:
            return user == self.name
        if k is Kind.DOMAIN:
            return user.rpartition("@")[2] == self.name
        if k is Kind.GROUP:
            return user in groups.get(self.name, ())
        return k is Kind.MEMBER


AUTOGROUP_KINDS = {k.value: k for k in (Kind.MEMBER, Kind.TAGGED, Kind.SELF, Kind.INTERNET,
                                        Kind.DANGER_ALL)}
ALL = Selector(Kind.ALL, "*")
