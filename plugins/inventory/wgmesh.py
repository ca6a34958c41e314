"""Ansible inventory plugin for a wgmesh mesh definition (thin adapter over wgmesh.build)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: wgmesh
short_description: Nodes of a wgmesh mesh definition (mesh.yml)
description:
  - Reads C(mesh.yml) (network settings and nodes), its policy and C(mesh.lock.yml), checks
    them together, and lists every managed node with its mesh identity as host variables.
  - Groups are C(wgmesh) (every managed node), one per tag (C(tag:prod-web) becomes
    C(tag_prod_web)), one per owner of untagged nodes (C(alice@example.com) becomes
    C(owner_alice_example_com); tags replace the owner's identity, as in policy),
    and one per role with approved routes or exit node or relay
    (C(wgmesh_subnet_routers), C(wgmesh_exit_nodes), C(wgmesh_relays)).
  - Host variables are prefixed C(wgmesh_); read them with C(ansible-inventory --host NAME).
  - Nodes that Ansible does not manage (C(managed) false, such as phones) are not hosts; they
    still appear in the peers of hosts that may talk to them.
  - Never writes the lockfile; new nodes get the addresses the next compile will lock.
options:
  plugin:
    description: Marks the file as a wgmesh mesh definition.
    required: true
    choices: [wgmesh]
    type: str
notes:
  - The other keys (policy, network, nodes) are described in docs/mesh.md.
  - Needs the wgmesh Python package in the Python that runs Ansible.
"""

EXAMPLES = r"""
# inventories/prod/mesh.yml
plugin: wgmesh
policy: ../../policies/prod.hujson
nodes:
  web1:
    ansible_host: 192.0.2.11
    endpoint: 192.0.2.11:51820
    tags: [tag:prod-web]
"""

import os
import re

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

try:
    from wgmesh.build import build
    from wgmesh.errors import InputError
    from wgmesh.policytests import PolicyTestFailure
except ImportError as exc:  # pragma: no cover - depends on the controller's environment
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None


def group_name(prefix, text):
    return prefix + re.sub(r"[^A-Za-z0-9_]", "_", text).lower()


class InventoryModule(BaseInventoryPlugin):
    NAME = "wgmesh"

    def verify_file(self, path):
        return super().verify_file(path) and os.path.basename(path) in ("mesh.yml", "mesh.yaml")

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        if IMPORT_ERROR is not None:
            raise AnsibleParserError(
                f"wgmesh inventory needs the wgmesh package ({IMPORT_ERROR}); "
                "install it with ./dev.sh install and run Ansible from .venv")
        try:
            result = build(path, run_tests=False)
        except (InputError, PolicyTestFailure) as exc:
            raise AnsibleParserError(str(exc)) from exc
        res = result.resolution
        inventory.add_group("wgmesh")
        inventory.add_group("wgmesh_leaving")  # filled by playbooks/check.yml
        for name in res.names:
            node = result.mesh.nodes[name]
            if not node.managed:
                continue
            i = res.index[name]
            inventory.add_host(name, group="wgmesh")
            groups = [group_name("tag_", t.removeprefix("tag:")) for t in node.tags]
            if node.owner and not node.tagged:
                # As policy sees it: a tagged node belongs to its tags, not its owner.
                groups.append(group_name("owner_", node.owner))
            if i in res.routes:
                groups.append("wgmesh_subnet_routers")
            if i in res.exits:
                groups.append("wgmesh_exit_nodes")
            if node.relay:
                groups.append("wgmesh_relays")
            for g in groups:
                inventory.add_host(name, group=inventory.add_group(g))
            alloc = result.alloc[name]
            for key, value in {
                "ansible_host": node.ansible_host,
                "wgmesh_owner": node.owner,
                "wgmesh_tags": list(node.tags),
                "wgmesh_address": str(alloc.ipv4),
                "wgmesh_address6": str(alloc.ipv6),
                "wgmesh_endpoint": node.endpoint,
                "wgmesh_site": node.site,
                "wgmesh_lan_address": str(node.lan_address) if node.lan_address else None,
                "wgmesh_advertise_routes": [str(r) for r in node.advertise_routes],
                "wgmesh_advertise_exit_node": node.advertise_exit_node,
                "wgmesh_use_exit_node": node.use_exit_node,
                "wgmesh_relay": node.relay,
                "wgmesh_expires": node.expires.isoformat() if node.expires else None,
                "wgmesh_public_key_pinned": alloc.public_key,
                "wgmesh_mesh_file": str(result.mesh.path),
                "wgmesh_interface": result.mesh.network.interface,
                "wgmesh_description": node.description,
            }.items():
                inventory.set_variable(name, key, value)
