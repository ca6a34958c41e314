"""The bundle: everything one host runs, as one document with a content hash."""

from __future__ import annotations

from typing import Any

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    BUNDLE_FORMAT,
    bundle_hash,
)
from wgmesh.compile.hostoutput import HostOutput
from wgmesh.mesh import Network
from wgmesh.render.common import clean, clean_key
from wgmesh.render.names import hosts_block, resolver_conf, split_dns
from wgmesh.render.ruleset import nftables
from wgmesh.render.sshd import sshd_dropin
from wgmesh.render.wireguard import hop_conf, wg_quick

# What a host runs, as one document: the apply module compares the host with it and
# converges it in one step. Its hash is over content only, so the same state reached from two
# commits is one bundle; the commit says where the inputs came from.
SYSCTL_FORWARDING = ("# wgmesh: this host forwards for a subnet route or as exit node\n"
                     "net.ipv4.ip_forward = 1\nnet.ipv6.conf.all.forwarding = 1\n")


def agent_json(host: HostOutput) -> dict[str, Any]:
    """The agent's part of a bundle: every value checked here and again on the host."""
    a = host.agent
    clean(a.address, *(v for lh in a.lighthouses for v in lh[:2]),
          *(v for p in a.punch for v in (p[0], p[2], p[3], p[4])))
    for key in [*(lh[2] for lh in a.lighthouses), *(p[1] for p in a.punch)]:
        clean_key(key)
    out: dict[str, Any] = {
        "port": a.port,
        "address": a.address,
        "lighthouses": [{"name": n, "address": addr, "public_key": k}
                        for n, addr, k in a.lighthouses],
        "punch": [{"name": n, "public_key": k, "address": addr, "relay_endpoint": ep,
                   "relay": relay} for n, k, addr, ep, relay in a.punch],
    }
    if a.clients:
        for addr, (name, key, peers) in a.clients.items():
            clean(addr, name)
            for k in (key, *peers):
                clean_key(k)
        out["clients"] = {addr: {"name": n, "public_key": k, "peers": ps}
                          for addr, (n, k, ps) in a.clients.items()}
    return out


def bundle(host: HostOutput, net: Network, public_key: str | None,
           commit: str | None = None) -> dict[str, Any]:
    if public_key:
        clean_key(public_key)
    body: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "name": host.name,
        "interface": net.interface,
        "hop_interface": net.hop_interface,
        "public_key": public_key,
        "wg_conf": wg_quick(host, net),
        "hop_conf": hop_conf(host, net),
        "nftables": nftables(host, net),
        "hosts_block": hosts_block(host),
        "sysctl": SYSCTL_FORWARDING if host.forwarding else None,
        "sshd": sshd_dropin(host),
        "dns": split_dns(host),
        "uses_exit_node": host.uses_exit_node,
        "management_networks": ([str(n) for n in net.management_networks]
                                if host.uses_exit_node else []),
    }
    if host.agent:
        body["agent"] = agent_json(host)
    if host.resolver:
        body["resolver_conf"] = resolver_conf(host)
    if net.key_max_age_days or host.node.expires:
        # What the monitor reports of the key and the node's end (wgmesh_metrics).
        body["monitor"] = {"key_max_age_days": net.key_max_age_days,
                           "expires": host.node.expires.isoformat() if host.node.expires
                           else None}
    body["hash"] = bundle_hash(body)
    body["commit"] = commit
    return body
