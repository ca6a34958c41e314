"""Ansible inventory plugin for the wgmesh lab (thin adapter over wgmesh.lab.topology)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: wgmesh_lab
short_description: Hosts of a wgmesh network-namespace lab
description:
  - Reads a wgmesh lab topology file (the same file C(wgmesh lab up) builds the lab from) and
    lists its hosts, with connection settings that reach each host's own sshd through an SSH
    ProxyCommand into the lab's fabric namespace.
  - Groups are C(lab) (every host), C(lab_wireguard) (hosts that may join a mesh),
    C(lab_plain) (hosts without WireGuard), C(lab_natted) (hosts behind a NAT router) and
    C(lab_segment_<segment>) per underlay segment.
  - Host variables are prefixed C(wgmesh_lab_).
options:
  plugin:
    description: Marks the file as a wgmesh lab topology.
    required: true
    choices: [wgmesh_lab]
    type: str
notes:
  - The topology's other keys (name, segments, routers, hosts) are read by the wgmesh package;
    see docs/lab.md.
  - Needs the wgmesh Python package installed in the Python that runs Ansible.
"""

EXAMPLES = r"""
# inventories/lab/topology.yml
plugin: wgmesh_lab
name: wgl
segments:
  internet: {subnet: 192.0.2.0/24, mgmt: 192.0.2.1}
hosts:
  pub1: {interfaces: {internet: 192.0.2.11}}
"""

import os

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

try:
    from wgmesh.errors import InputError
    from wgmesh.lab.topology import load_topology
except ImportError as exc:  # pragma: no cover - depends on the controller's environment
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None


class InventoryModule(BaseInventoryPlugin):
    NAME = "wgmesh_lab"

    def verify_file(self, path):
        return super().verify_file(path) and os.path.basename(path) in (
            "topology.yml", "topology.yaml")

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        if IMPORT_ERROR is not None:
            raise AnsibleParserError(
                f"wgmesh_lab needs the wgmesh package ({IMPORT_ERROR}); "
                "install it with ./dev.sh install and run Ansible from .venv")
        try:
            topo = load_topology(path)
        except InputError as exc:
            raise AnsibleParserError(str(exc)) from exc
        fabric = f"/run/netns/{topo.fabric}"
        common = (f'-o ProxyCommand="nsenter --net={fabric} nc %h %p" '
                  f"-o UserKnownHostsFile={topo.state_dir / 'known_hosts'} "
                  "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes")
        for group in ("lab", "lab_wireguard", "lab_plain", "lab_natted"):
            inventory.add_group(group)
        for host in topo.hosts.values():
            inventory.add_host(host.name, group="lab")
            inventory.add_host(host.name, group="lab_wireguard" if host.wireguard else "lab_plain")
            nat = topo.natted(host)
            if nat:
                inventory.add_host(host.name, group="lab_natted")
            for seg in host.interfaces:
                inventory.add_host(host.name, group=inventory.add_group(f"lab_segment_{seg}"))
            for key, value in {
                "ansible_host": str(host.address),
                "ansible_user": host.user,
                # wgadmin has sudo; guest has not (a run as guest shows what a missing
                # become gives).
                "ansible_become": host.user == "wgadmin",
                "ansible_ssh_private_key_file": str(topo.state_dir / "id_ed25519"),
                "ansible_ssh_common_args": common,
                # Labs reuse addresses; each needs its own ControlPersist sockets.
                "ansible_control_path_dir": str(topo.state_dir / "cp"),
                "wgmesh_lab_name": topo.name,
                "wgmesh_lab_description": host.description,
                "wgmesh_lab_interfaces": {s: str(a) for s, a in host.interfaces.items()},
                "wgmesh_lab_nat_router": nat.name if nat else None,
                "wgmesh_lab_nat_kind": nat.nat if nat else None,
                "wgmesh_lab_nat_public_address": str(nat.wan_address) if nat else None,
            }.items():
                inventory.set_variable(host.name, key, value)
