"""Validation of a whole policy: every section read, every problem collected at once."""

from __future__ import annotations

from pathlib import Path

from wgmesh import hujson, limits
from wgmesh.errors import InputError, Problem, did_you_mean, read_text
from wgmesh.policy.check_names import NameChecks
from wgmesh.policy.check_rules import RuleChecks
from wgmesh.policy.check_ssh import SshChecks
from wgmesh.policy.check_tests import TestChecks
from wgmesh.policy.model import Policy, ProtoPorts, Rule
from wgmesh.policy.syntax import DEFAULT_PROTOS, TOP_KEYS
from wgmesh.selectors import ALL


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    if not path.exists():
        raise InputError([Problem(str(path), 0, 0, "", "cannot read policy: No such file or "
                                  "directory",
                                  "check mesh.yml's policy: path, or pass --policy")])
    return parse_policy(read_text(path, str(path), limits.MAX_POLICY_BYTES), str(path))


def parse_policy(text: str, name: str = "<policy>") -> Policy:
    doc = hujson.loads(text, name)
    return Validator(doc).run()


class Validator(NameChecks, RuleChecks, SshChecks, TestChecks):
    """One policy document read section by section, in the order later sections need."""

    def run(self) -> Policy:
        data = self.doc.value
        if not isinstance(data, dict):
            self.err((), "a policy must be a JSON object")
            raise InputError(self.problems)
        for key in data:
            if key not in TOP_KEYS:
                self.err((key,), f'unknown field "{key}"', did_you_mean(key, TOP_KEYS))
        for key in ("nodeAttrs",):
            if key in data:
                self.err((key,), f'"{key}" is not supported by wgmesh',
                         "remove it; see docs/policy.md for what a static mesh supports")
        if "randomizeClientPort" in data:
            if not isinstance(data["randomizeClientPort"], bool):
                self.err(("randomizeClientPort",), "randomizeClientPort is true or false")
            elif data["randomizeClientPort"]:
                # Peers' endpoints are rendered with each node's port, so ports are fixed.
                self.policy.warnings.append(
                    "randomizeClientPort has no effect: listen ports come from mesh.yml "
                    "(network.listen_port, a node's listen_port), since peers are configured "
                    "with them")
        self.groups(data.get("groups", {}))
        self.hosts(data.get("hosts", {}))
        self.ipsets(data.get("ipsets", {}))
        self.tag_owners(data.get("tagOwners", {}))
        if "acls" not in data and "grants" not in data:
            # Tailscale: a policy with neither rule list allows everything.
            self.policy.allow_all = True
            self.policy.rules.append(Rule("(no acls or grants: allow all)", 0, (ALL,), (ALL,),
                                          (ProtoPorts(DEFAULT_PROTOS),)))
        self.acls(data.get("acls", []))
        self.grants(data.get("grants", []))
        self.auto_approvers(data.get("autoApprovers", {}))
        self.ssh(data.get("ssh", []))
        self.tests(data.get("tests", []))
        self.ssh_tests(data.get("sshTests", []))
        if self.problems:
            raise InputError(self.problems)
        return self.policy

