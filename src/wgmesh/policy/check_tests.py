"""The policy's own tests (tests): their sources, destinations and expectations."""

from __future__ import annotations

from typing import Any

from wgmesh import grammar
from wgmesh.policy.model import PolicyTest
from wgmesh.policy.reader import SectionReader
from wgmesh.policy.syntax import ICMP, parse_proto, split_hostport


class TestChecks(SectionReader):
    """The checks of the policy's tests."""

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
