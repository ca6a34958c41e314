#!/usr/bin/python
"""Documentation for the wgmesh_compile action (it runs on the controller only)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: wgmesh_compile
short_description: Pin the hosts' public keys and compile one bundle per host
description:
  - Runs on the controller and contacts no host. Loads C(mesh.yml), its policy and
    C(mesh.lock.yml), runs the policy's tests (once per input state), records each host's
    public key in the lockfile on first sight, refuses a host whose key differs from its
    pinned key (unless it is being rotated), and compiles each named host's bundle - what
    C(wgmesh_apply) makes the host run. Use with C(run_once).
  - Public keys are read from the C(__wgmesh_key) result of the named hosts (the
    C(wgmesh_key) task); a host without one (another batch of C(serial), outside
    C(--limit)) keeps the key pinned in the lockfile.
  - Nothing it returns or writes holds a secret. In check mode the lockfile is not written.
  - Warns, once, of nodes that expire within I(warn_days), and with C(--limit) of the
    mesh's hosts the run leaves out (naming those whose bundle is now stale for sure).
options:
  mesh:
    description: Path of C(mesh.yml).
    type: path
    required: true
  policy:
    description: A policy file to use instead of the one C(mesh.yml) names.
    type: path
  hosts:
    description: The hosts to compile a bundle for (the batch); empty checks the mesh only.
    type: list
    elements: str
    default: []
  rotate:
    description: Hosts whose reported key replaces their pinned key (key rotation).
    type: list
    elements: str
    default: []
  warn_days:
    description: Warn of nodes that expire within this many days (and of expired ones).
    type: int
  warn:
    description: Give the mesh's warnings (unapproved routes, pairs that can never connect,
      old keys); the role gives them only when C(playbooks/check.yml) did not (C(--limit)).
    type: bool
    default: true
  pull:
    description:
      - A host compiling its own bundle (C(playbooks/pull.yml)) - the lockfile is never
        written, and a key it does not pin (a host not enrolled) or a lockfile behind
        mesh.yml is refused.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Shows the lockfile change.
author: wgmesh
"""

EXAMPLES = r"""
- name: Compile the mesh once for this batch
  wgmesh_compile:
    mesh: "{{ wgmesh_mesh_file }}"
    hosts: "{{ ansible_play_batch }}"
  run_once: true
  register: plan
"""

RETURN = r"""
hosts:
  description:
    - Per host, either C(bundle) (see wgmesh_apply), C(relay), C(addresses) and C(peers)
      (name, connection, endpoint, public key), or C(leaving) with the reason (expired,
      not in mesh.yml, not managed).
  returned: success
  type: dict
commit:
  description: The git commit of the inputs (with C(+changes) when they differ from it).
  returned: success
  type: str
expired:
  description: Nodes past their C(expires) date.
  returned: success
  type: list
  elements: str
retired:
  description: Nodes that left mesh.yml (kept in the lockfile so their addresses are not reused).
  returned: success
  type: list
  elements: str
lockfile:
  description: The lockfile that was read (and written when keys were pinned).
  returned: success
  type: str
interface:
  description: The mesh interface name.
  returned: success
  type: str
manifest:
  description:
    - With a C(signing) section in mesh.yml, the signed manifest (what each host checks
      its bundle against). The run is refused before any host is touched when the manifest
      is missing or states other inputs, when a host reports a key the lockfile does not
      pin, or when the lockfile is behind mesh.yml; the mesh is compiled as of the
      manifest's date.
  returned: when mesh.yml has a signing section
  type: dict
trust:
  description: The admins and threshold mesh.yml states (installed on a host that has none).
  returned: when mesh.yml has a signing section
  type: dict
agent_program:
  description: The NAT traversal agent's program, a zip application in base64
    (wgmesh_apply's I(agent_program)).
  returned: when a bundle has an agent part (the mesh has lighthouses and relayed pairs)
  type: str
monitor_program:
  description: The monitor's program, a zip application in base64 (wgmesh_apply's
    I(monitor_program)).
  returned: when a host has a bundle
  type: str
serial:
  description: The manifest's serial.
  returned: when mesh.yml has a signing section
  type: int
"""
