"""The sshd drop-in of SSH policy: checked with sshd itself before it counts, and reloaded.
Standard library only."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import read_text as read
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_runner import ApplyError, Runner


def sshd_binary() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/sbin/sshd")
                                         if os.path.exists(p)), None)


def check_sshd(config: str, dropin_text: str, dropin: str) -> None:
    """sshd accepts its configuration with the drop-in, and reads the drop-in: a connection
    to the host's mesh address gets the drop-in's AllowUsers or DenyUsers."""
    sshd = sshd_binary()
    if sshd is None:
        raise ApplyError("the policy's ssh rules name this host, but sshd is not installed")
    done = subprocess.run([sshd, "-t", "-f", config], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise ApplyError(f"sshd refuses its configuration with {dropin}: "
                         f"{(done.stderr + done.stdout).strip()[:300]}")
    found = re.search(r"^Match LocalAddress ([0-9.]+),", dropin_text, re.M)
    if found is None:
        raise ApplyError(f"the bundle's sshd rules for {dropin} have no mesh address")
    done = subprocess.run([sshd, "-T", "-f", config, "-C",
                           f"user=wgmesh-check,host=wgmesh-check,addr=192.0.2.1,"
                           f"laddr={found.group(1)}"], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0 or not re.search(r"^(allowusers|denyusers) ", done.stdout, re.M):
        raise ApplyError(f"sshd does not read {dropin}: add 'Include "
                         f"{os.path.dirname(dropin)}/*.conf' at the top of {config}")


def reload_sshd(run: Runner, pidfile: str) -> str:
    """sshd re-reads its configuration (open sessions stay): through systemd where systemd
    runs it (Debian's ssh.service, elsewhere sshd.service), so the unit's own reload runs and
    the journal says so; else SIGHUP to the pid in its pid file."""
    if os.path.isdir("/run/systemd/system"):
        for unit in ("ssh.service", "sshd.service"):
            if run.rc("systemctl", "is-active", "--quiet", unit) == 0:
                run("systemctl", "reload", unit)
                return f"reload {unit}"
    try:
        pid = int((read(pidfile) or "").strip())
    except ValueError:
        pid = 0
    # A stale pid file may name another process by now: only an sshd gets the signal.
    if pid <= 1 or not (read(f"/proc/{pid}/comm") or "").startswith("sshd"):
        return f"sshd is not running ({pidfile}): it reads the drop-in when it starts"
    os.kill(pid, signal.SIGHUP)
    return "reload sshd"
