"""What a host runs under systemd beside its interfaces: the drop-in that puts back the last
good bundle's files before an interface starts, and the units of the agent and the
monitor. Standard library only."""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    MONITOR_CONFIG,
    MONITOR_PROGRAM,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import (
    read_bytes,
    write_atomic,
)

if TYPE_CHECKING:
    from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_runner import Runner

# A reboot half way through an apply may leave files of two bundles on disk. Where systemd
# runs the interfaces, each wg-quick@ start first puts back the files of the last bundle
# that applied whole: a drop-in runs this fixed script with the list the apply writes as
# its last step (LAST_GOOD_FILES in the state folder). Interfaces wgmesh does not run are
# left alone.
LAST_GOOD_FILES = "last-good-files.json"
LAST_GOOD_SCRIPT = "/usr/local/lib/wgmesh/last-good"
LAST_GOOD_DROPIN = "/etc/systemd/system/wg-quick@.service.d/wgmesh-last-good.conf"
LAST_GOOD_SCRIPT_TEXT = """#!/usr/bin/env python3
# wgmesh: before wg-quick@IFACE starts, put back the files of the last bundle that applied
# whole (an apply a reboot interrupted may have written some of the next one's). Fixed text.
import json
import os
import sys

try:
    with open(sys.argv[2]) as fh:
        last = json.load(fh)
except (OSError, ValueError):
    sys.exit(0)
if sys.argv[1] not in last["interfaces"]:
    sys.exit(0)
for path, text, mode in last["files"]:
    try:
        with open(path) as fh:
            have = fh.read()
    except OSError:
        have = None
    if have == text:
        continue
    print(f"wgmesh: {path} is not the last good bundle's ({last['hash']}): put back")
    if text is None:
        os.unlink(path)
        continue
    tmp = f"{path}.wgmesh-{os.getpid()}"  # wg0 and wg0-hop may start together
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
"""


# The state folder lands on a systemd command line (LAST_GOOD_DROPIN): wgmesh_apply lets through
# only a plain absolute path, whole-string (no space, quote, '%', '$' or line end).
PLAIN_PATH = re.compile(r"(/[A-Za-z0-9._-]+)+")

AGENT_PROGRAM = "agent.pyz"
LEGACY_AGENT = "agent.py"  # what wgmesh installed before the agent was a zip
AGENT_SERVICE = "wgmesh-agent.service"
MONITOR_SERVICE = "wgmesh-monitor.service"
UNITS = "/etc/systemd/system/"
# The programs a host runs beside its interface: state-folder file, service, what it does,
# and what its service may do (capabilities, socket families).
PROGRAMS = {
    "agent": (AGENT_PROGRAM, AGENT_SERVICE, "direct paths between nodes behind NAT",
              "CAP_NET_ADMIN CAP_NET_RAW", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
    "monitor": (MONITOR_PROGRAM, MONITOR_SERVICE, "metrics and denied-flow logs",
                "CAP_NET_ADMIN", "AF_UNIX AF_NETLINK"),
}
DEFAULT_TEXTFILE = "/var/lib/prometheus/node-exporter/wgmesh.prom"


def program_unit(kind: str, state_dir: str, interface: str, writable: str = "") -> str:
    """A program as a service, with what it needs and no more: wg(8) and nft(8)
    (CAP_NET_ADMIN; the agent's socket bound to the mesh interface: CAP_NET_RAW), its files
    in state_dir (and ``writable``)."""
    program, _, what, caps, families = PROGRAMS[kind]
    return (
        f"[Unit]\nDescription=wgmesh {kind}: {what}\n"
        f"After=network-online.target wg-quick@{interface}.service\nWants=network-online.target\n\n"
        f"[Service]\nExecStart=/usr/bin/python3 {os.path.join(state_dir, program)} "
        f"--state-dir {state_dir}\nRestart=always\nRestartSec=2\n"
        f"CapabilityBoundingSet={caps}\nNoNewPrivileges=yes\n"
        f"ProtectSystem=strict\nReadWritePaths={state_dir} -/run/wireguard"
        f"{' ' + writable if writable else ''}\n"
        "ProtectHome=yes\nPrivateTmp=yes\nProtectKernelModules=yes\n"
        f"ProtectControlGroups=yes\nRestrictAddressFamilies={families}\n"
        "LockPersonality=yes\nMemoryDenyWriteExecute=yes\n\n"
        "[Install]\nWantedBy=multi-user.target\n")


def last_good_dropin(state_dir: str) -> str:
    return ("# wgmesh: an interrupted apply never leaves an interface on half a bundle.\n"
            "[Service]\n"
            f"ExecStartPre=/usr/bin/env python3 {LAST_GOOD_SCRIPT} %i "
            f"{os.path.join(state_dir, LAST_GOOD_FILES)}\n")


class Programs:
    """The agent and the monitor a host runs beside its interfaces: their zip files in the
    state folder, the monitor's settings and, where systemd runs, their units. ``given``:
    each program's bytes as the controller sent them (None: an older controller, and what
    is installed stays)."""

    def __init__(self, run: Runner, state_dir: str, service: str,
                 given: dict[str, bytes | None], monitor_config: dict):
        self.run, self.state_dir, self.service = run, state_dir, service
        self.given, self.monitor_config = given, monitor_config

    def files(self, b: dict | None) -> dict[str, list[tuple[str, object, int]]]:
        """Per program, its files (content None: removed) and, where systemd runs, its unit.
        The agent runs where the bundle has an agent part, the monitor wherever a bundle
        runs; without the program (an older controller) what is installed stays."""
        out: dict[str, list[tuple[str, object, int]]] = {}
        for kind, given in self.given.items():
            wanted = b is not None and (kind == "monitor" or b.get("agent") is not None)
            if wanted and given is None:
                continue
            program, service = PROGRAMS[kind][:2]
            files: list[tuple[str, object, int]] = [
                (os.path.join(self.state_dir, program), given if wanted else None, 0o644)]
            if kind == "agent":
                files.append((os.path.join(self.state_dir, LEGACY_AGENT), None, 0o644))
            writable = ""
            if kind == "monitor":
                files.append((os.path.join(self.state_dir, MONITOR_CONFIG),
                              json.dumps(self.monitor_config, indent=1) + "\n" if wanted else None,
                              0o644))
                textfile = self.monitor_config["textfile"]
                writable = f"-{os.path.dirname(textfile)}" if textfile else ""
            if self.service == "systemd":
                files.append((UNITS + service, program_unit(
                    kind, self.state_dir, b["interface"], writable) if wanted else None, 0o644))
            out[kind] = files
        return out

    def sync(self, b: dict | None, check_mode: bool) -> list[str]:
        """Install, (re)start or remove the agent and the monitor, after the bundle they
        read is recorded (b None: the host leaves, both go)."""
        run, actions = self.run, []
        for kind, files in self.files(b).items():
            service, changed = PROGRAMS[kind][1], False
            for path, content, mode in files:
                data = content.encode() if isinstance(content, str) else content
                if read_bytes(path) == data:
                    continue
                changed = True
                actions.append(f"{'write' if data is not None else 'remove'} {path}")
                if check_mode:
                    continue
                if data is None and path == UNITS + service:
                    run.rc("systemctl", "disable", "--now", service)
                write_atomic(path, data, mode, dir_mode=0o755)
            wanted = files[0][1] is not None
            if self.service != "systemd":
                continue
            if not wanted:
                if changed and not check_mode:
                    run("systemctl", "daemon-reload")
                continue
            active = run.rc("systemctl", "is-active", "--quiet", service) == 0
            if changed or not active:
                actions.append(f"{'restart' if active else 'start'} {service}")
                if not check_mode:
                    run("systemctl", "daemon-reload")
                    run("systemctl", "enable", service)
                    run("systemctl", "restart", service)
        textfile = self.monitor_config["textfile"]
        if b is not None and textfile and not check_mode:
            # The monitor's service may write only to a folder that exists.
            os.makedirs(os.path.dirname(textfile), mode=0o755, exist_ok=True)
        return actions
