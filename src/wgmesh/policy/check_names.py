"""The policy's naming sections: groups, hosts, ipsets and tagOwners."""

from __future__ import annotations

from typing import Any

from wgmesh import grammar, limits
from wgmesh.errors import did_you_mean
from wgmesh.policy.reader import SectionReader
from wgmesh.selectors import Kind, Selector


class NameChecks(SectionReader):
    """The checks of groups, hosts, ipsets and tagOwners."""

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
