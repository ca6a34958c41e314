"""Renderers: one per output a host receives. Sorted, never timestamped, never a secret.

One module per output: ``wireguard`` (wg-quick files), ``ruleset`` (the nftables table),
``names`` (/etc/hosts, split DNS, the resolver), ``sshd`` (the SSH policy drop-in),
``bundles`` (what a host runs, whole), ``meshjson`` (the mesh as one JSON document); and
``common`` (the last check before a value is written).
"""

from __future__ import annotations

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    RESOLVER_CONF,
    RULESET_PATH,
)
from wgmesh.render.bundles import SYSCTL_FORWARDING, agent_json, bundle
from wgmesh.render.common import RenderError, clean, clean_key
from wgmesh.render.meshjson import host_json, plan_json, write_plan
from wgmesh.render.names import hosts_block, resolver_conf, split_dns_text
from wgmesh.render.ruleset import nftables
from wgmesh.render.sshd import sshd_dropin
from wgmesh.render.wireguard import (
    FILTER_HOOK,
    RESOLVER_HOOK,
    hop_conf,
    peer_block,
    wg_quick,
)

__all__ = [
    "FILTER_HOOK",
    "RESOLVER_CONF",
    "RESOLVER_HOOK",
    "RULESET_PATH",
    "SYSCTL_FORWARDING",
    "RenderError",
    "agent_json",
    "bundle",
    "clean",
    "clean_key",
    "hop_conf",
    "host_json",
    "hosts_block",
    "nftables",
    "peer_block",
    "plan_json",
    "resolver_conf",
    "split_dns_text",
    "sshd_dropin",
    "wg_quick",
    "write_plan",
]
