"""How wgmesh_apply runs the host's tools (wg, wg-quick, ip, nft, sysctl, systemctl): one
runner, one error that returns the host to its last good bundle, and output made safe to
report. Standard library only."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    KEY_TEXT,
)

if TYPE_CHECKING:
    from ansible.module_utils.basic import AnsibleModule


class ApplyError(Exception):
    """A step failed; the host is returned to its last good bundle."""


class Runner:
    """The one place that runs wg, wg-quick, ip, nft, sysctl and systemctl."""

    def __init__(self, module: AnsibleModule):
        self.module = module

    def __call__(self, *argv: str, check: bool = True, data: str | None = None) -> str:
        rc, out, err = self.module.run_command(list(argv), data=data, binary_data=True)
        if check and rc != 0:
            raise ApplyError(f"{' '.join(argv)} failed ({rc}): {redact(err.strip())}")
        return out if rc == 0 else ""

    def rc(self, *argv: str, data: str | None = None) -> int:
        return self.module.run_command(list(argv), data=data, binary_data=True)[0]

    def output(self, *argv: str) -> tuple[int, str]:
        """Return code and output of a command that prints a lot (a table, a thousand
        peers): run_command reads in small chunks, which costs more than the command."""
        path = self.module.get_bin_path(argv[0], required=True)
        done = subprocess.run([path, *argv[1:]], capture_output=True, text=True, check=False)
        return done.returncode, done.stdout


# wg and wg-quick may echo the line of a configuration they refuse, and that line can hold
# the private key: their output is reported with every key-shaped string replaced.
def redact(text: str) -> str:
    """Command output safe to report: every key-shaped string replaced."""
    return KEY_TEXT.sub("(key redacted)", text)
