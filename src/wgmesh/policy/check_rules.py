"""The policy's access sections: acls and grants (with via and app), and autoApprovers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wgmesh import grammar
from wgmesh.policy.model import ProtoPorts, Rule
from wgmesh.policy.reader import SectionReader
from wgmesh.policy.syntax import (
    ALL_PORTS,
    DEFAULT_PROTOS,
    PORT_PROTOS,
    parse_ports,
    parse_proto,
    split_hostport,
)
from wgmesh.selectors import Kind, Selector


class RuleChecks(SectionReader):
    """The checks of acls, grants and autoApprovers."""

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
