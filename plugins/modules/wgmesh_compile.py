#!/usr/bin/python
"""Documentation for the wgmesh_compile action (it runs on the controller only)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: wgmesh_compile
short_description: Pin the hosts' public keys and compile the whole mesh once
description:
  - Runs on the controller. Loads C(mesh.yml), its policy and C(mesh.lock.yml), runs the
    policy's tests, records each host's public key in the lockfile on first sight, refuses
    a host whose key differs from its pinned key, and compiles every host's outputs in one
    pass (use with C(run_once)).
  - Returns per host its wg-quick configuration (no private key), nftables ruleset, names
    block and peer summary. Nothing it returns or writes holds a secret.
  - In check mode the lockfile is not written.
options:
  mesh:
    description: Path of C(mesh.yml).
    type: path
    required: true
  policy:
    description: A policy file to use instead of the one C(mesh.yml) names.
    type: path
  public_keys:
    description: Public key of each host in the play (from wgmesh_key).
    type: dict
    required: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Shows the lockfile change.
author: wgmesh
"""

EXAMPLES = r"""
- name: Compile the mesh once for the whole play
  wgmesh_compile:
    mesh: "{{ wgmesh_mesh_file }}"
    public_keys: "{{ dict(ansible_play_hosts | zip(keys)) }}"
  run_once: true
  register: plan
"""

RETURN = r"""
hosts:
  description: Per host, C(wg_conf), C(nftables), C(hosts_block), C(forwarding), C(peers).
  returned: success
  type: dict
lockfile:
  description: The lockfile that was read (and written when keys were pinned).
  returned: success
  type: str
interface:
  description: The mesh interface name.
  returned: success
  type: str
"""
