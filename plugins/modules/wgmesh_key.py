#!/usr/bin/python
"""Host-side: create the WireGuard private key if missing and return only the public key."""

from __future__ import annotations

DOCUMENTATION = r"""
module: wgmesh_key
short_description: Make a host's WireGuard key on the host and return its public key
description:
  - Creates the private key file if it does not exist (mode 0600, owned by root), with
    C(wg genkey), else PyNaCl, else a built-in X25519 implementation, so a key can be made
    even before wireguard-tools are installed.
  - Returns the public key only. The private key is never returned, printed or logged, at any
    verbosity; it never leaves the host.
  - An existing key is replaced only with I(rotate) (C(playbooks/rotate.yml)).
  - Also says which tools the host lacks (C(wg), C(wg-quick), C(nft), and C(wireguard-go)
    where the kernel has no WireGuard), so the role installs them without another round trip.
options:
  path:
    description: The private key file.
    type: path
    required: true
  rotate:
    description: Replace the key with a new one (the old one is gone; peers learn the new
      public key from the next compile).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: Reports that a key would be created; creates nothing.
  diff_mode:
    support: none
    details: A key has no diff that could be shown without the secret.
author: wgmesh
"""

EXAMPLES = r"""
- name: Make this host's WireGuard key
  wgmesh_key:
    path: /etc/wireguard/wg0.key
  register: key
"""

RETURN = r"""
public_key:
  description: The public key; null in check mode when the key does not exist yet.
  returned: always
  type: str
  sample: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
created:
  description: Whether a new private key was (or, in check mode, would be) made.
  returned: always
  type: bool
missing_tools:
  description: Commands the host lacks to run the mesh.
  returned: always
  type: list
  elements: str
  sample: [wg, wg-quick, wireguard-go]
has_nacl:
  description: Whether PyNaCl, which checks signed manifests, is importable on the host.
  returned: always
  type: bool
has_resolved:
  description: Whether systemd-resolved runs on the host (split DNS then goes through it,
    and needs no dnsmasq).
  returned: always
  type: bool
"""

import os
import shutil
import subprocess

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import write_atomic
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_keys import (
    generate_private,
    public_of,
)


def has_nacl() -> bool:
    """PyNaCl, which checks signed manifests (wgmesh_apply), is importable."""
    try:
        import nacl.signing  # noqa: F401
    except ImportError:
        return False
    return True


def has_resolved() -> bool:
    """systemd-resolved runs (wgmesh_apply's resolved_runs: the same test)."""
    return os.path.isdir("/run/systemd/resolve") and shutil.which("resolvectl") is not None


def missing_tools() -> list[str]:
    missing = [t for t in ("wg", "wg-quick", "nft") if not shutil.which(t)]
    if not os.path.isdir("/sys/module/wireguard") and subprocess.run(
            ["modprobe", "-nq", "wireguard"], capture_output=True).returncode != 0 \
            and not shutil.which("wireguard-go"):
        missing.append("wireguard-go")
    return missing


# The first thing a run asks of a host: a user without root is told how, before anything.
NOT_ROOT = ("wgmesh needs root on this host (WireGuard keys, interfaces, nftables): connect as "
            "root, or as a user with sudo and ansible_become: true (group_vars/all.yml beside "
            "mesh.yml)")


def main() -> None:
    module = AnsibleModule(argument_spec={"path": {"type": "path", "required": True},
                                          "rotate": {"type": "bool", "default": False}},
                           supports_check_mode=True)
    if os.geteuid() != 0:
        module.fail_json(msg=NOT_ROOT)
    path = module.params["path"]
    exists = os.path.exists(path)
    make = not exists or module.params["rotate"]
    try:
        missing = missing_tools()
    except OSError:  # no modprobe
        missing = [t for t in ("wg", "wg-quick", "nft") if not shutil.which(t)]
    if make and module.check_mode:
        module.exit_json(changed=True, created=True, public_key=None, missing_tools=missing,
                         has_nacl=has_nacl(), has_resolved=has_resolved())
    try:
        if make:
            write_atomic(path, generate_private() + "\n", 0o600, dir_mode=0o700,
                         owner=(0, 0))
        with open(path) as fh:
            private = fh.read().strip()
        public = public_of(private)
        del private
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        module.fail_json(msg=f"could not make or read the WireGuard key at {path}: "
                         f"{type(exc).__name__}")
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        module.fail_json(msg=f"{path} is readable by others (mode {mode:o}); "
                         "fix it with chmod 600 (the key may have leaked)")
    module.exit_json(changed=make, created=make, public_key=public, missing_tools=missing,
                     has_nacl=has_nacl(), has_resolved=has_resolved())


if __name__ == "__main__":
    main()
