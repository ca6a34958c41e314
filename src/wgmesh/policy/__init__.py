"""Tailscale-format policy: parse, validate (every problem at once) and normalise.

Validation is a step of its own that collects every problem with its line and column; what
comes out is plain data (``model``: rules with selectors and protocol/port sets) for the
compiler. ``syntax`` reads the values (protocols, ports, host:port), ``reader`` the selectors
every section names, and one module checks each group of sections (``check_names``,
``check_rules``, ``check_ssh``, ``check_tests``); ``validator`` runs them all. Semantics
follow Tailscale's control plane; differences are listed in docs/policy.md.
"""

from wgmesh.policy.model import Policy, PolicyTest, ProtoPorts, Rule, SshRule, SshTest
from wgmesh.policy.syntax import ICMP, PORT_PROTOS, PROTOCOLS, split_hostport
from wgmesh.policy.validator import load_policy, parse_policy

__all__ = ["ICMP", "PORT_PROTOS", "PROTOCOLS", "Policy", "PolicyTest", "ProtoPorts", "Rule",
           "SshRule", "SshTest", "load_policy", "parse_policy", "split_hostport"]
