"""What every section of the policy is read with: problems with their line and column, and the
selectors (users, groups, tags, autogroups, hosts, addresses) all sections name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wgmesh import grammar, hujson
from wgmesh.errors import Problem, did_you_mean
from wgmesh.policy.model import Policy
from wgmesh.policy.syntax import AUTOGROUPS_DST, AUTOGROUPS_SRC, UNSUPPORTED_AUTOGROUPS, json_path
from wgmesh.selectors import ALL, AUTOGROUP_KINDS, Kind, Selector


class SectionReader:
    """Reads one policy document, recording every problem (``err``) instead of stopping."""

    def __init__(self, doc: hujson.Document):
        self.doc = doc
        self.problems: list[Problem] = []
        self.policy = Policy(Path(doc.name), doc=doc)

    def err(self, path: tuple, message: str, fix: str = "") -> None:
        line, col = self.doc.where(path)
        self.problems.append(Problem(self.doc.name, line, col, json_path(path), message, fix))

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
