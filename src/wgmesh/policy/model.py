"""The policy as plain data for the compiler: rules with selectors and protocol/port sets,
SSH rules, the policy's own tests, and where each came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wgmesh import grammar, hujson
from wgmesh.policy.syntax import ALL_PORTS, IPNet
from wgmesh.selectors import Selector


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
