"""The policy's SSH sections: ssh rules and sshTests."""

from __future__ import annotations

import re
from typing import Any

from wgmesh import grammar
from wgmesh.policy.model import SshRule, SshTest
from wgmesh.policy.reader import SectionReader
from wgmesh.policy.syntax import DURATION, DURATION_UNITS
from wgmesh.selectors import Kind, Selector


class SshChecks(SectionReader):
    """The checks of ssh rules and sshTests."""

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
