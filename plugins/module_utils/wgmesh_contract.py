"""What the controller and the hosts must agree on, in one copy: a bundle's format and the
hash over its content, the canonical JSON that is hashed and signed, and the paths and
numbers both sides name. Standard library only.

The controller (src/wgmesh) imports it as
``ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract`` (the wgmesh package
carries the collection); Ansible packs it into the payload of the modules that import it the
same way, so a host needs no wgmesh install to run them.
"""

from __future__ import annotations

import hashlib
import json
import re

# A bundle's format: a host refuses any other (controller and hosts are updated together).
BUNDLE_FORMAT = 1
# The bundle's fields its hash does not cover: the hash itself, and the commit it was
# compiled from (the same content from another commit is the same bundle).
UNHASHED = ("hash", "commit")

# The host's table and the file every wgmesh interface loads before it exists.
TABLE_FAMILY, TABLE_NAME = "inet", "wgmesh"
RULESET_PATH = "/etc/wgmesh/nftables.nft"
# Routing rules that keep the management networks on the main table while an exit node
# takes the default route: before wg-quick's own rules.
MANAGEMENT_RULE_PRIORITY = 1000
# Split DNS without systemd-resolved: wgmesh's own dnsmasq (its configuration and pid file).
DNSMASQ_CONF = "/etc/wgmesh/dnsmasq.conf"
DNSMASQ_PID = "/run/wgmesh-dnsmasq.pid"
# The mesh resolver on a node with resolver: true.
RESOLVER_CONF = "/etc/wgmesh/resolver.conf"
RESOLVER_PID = "/run/wgmesh-resolver.pid"


def canonical(value: object) -> bytes:
    """The one JSON text of a value: what is hashed and signed, on both sides."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def bundle_digest(bundle: dict) -> str:
    """The full SHA-256 of a bundle's content (manifests list it)."""
    return hashlib.sha256(canonical({k: v for k, v in bundle.items()
                                     if k not in UNHASHED})).hexdigest()


def bundle_hash(bundle: dict) -> str:
    """A bundle's ``hash``: the first 16 digits of its digest."""
    return bundle_digest(bundle)[:16]


# Anything shaped like a WireGuard key (private or public).
KEY_TEXT = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
# The names of the IP protocols the policy and the denied-flow log write by name.
PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp", 132: "sctp"}
# The table's named drop counters and why each drops: the policy's three chains; packets with
# mesh addresses on other interfaces (forged); on a relay, packets of pairs it does not
# relay; on the hop interface, anything but end-to-end WireGuard (the relayed underlay).
DROP_COUNTERS = {"dropped_in": "policy", "dropped_out": "policy", "dropped_fwd": "policy",
                 "dropped_underlay": "anti_spoof", "dropped_relay": "relay",
                 "dropped_hop": "underlay"}
# Denied-flow logs (network.log_denied): the policy's drops are copied, headers only and
# rate-limited, to this nflog group, where the host's monitor names them.
DENIED_LOG_GROUP = 5747
DENIED_LOG_PREFIX = "wgmesh denied "  # + the chain's direction: in, out, fwd
# The monitor: its program and configuration in the state folder.
MONITOR_PROGRAM = "monitor.pyz"
MONITOR_CONFIG = "monitor.json"
