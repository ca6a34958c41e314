"""Commands about running hosts: agent (run on a host), status, and shell completion."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from wgmesh.cli.common import (
    DRIFT_MESSAGE,
    EXIT_DRIFT,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_UNREACHED,
    project_folder,
)


def register(sub) -> None:
    """The parsers of agent, completion and status."""
    p = sub.add_parser("agent", help="on a host: the NAT traversal agent (lighthouse answers, "
                       "direct paths for relayed pairs); wgmesh-agent.service runs the same "
                       "code")
    p.add_argument("--state-dir", default="/var/lib/wgmesh", metavar="DIR",
                   help="where wgmesh_apply keeps bundle.json (default %(default)s)")
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("completion", help="print a shell completion script: "
                       "eval \"$(wgmesh completion bash)\", or save the zsh one as _wgmesh "
                       "in a folder of $fpath")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=cmd_completion)

    p = sub.add_parser("status", help="does every host run what the inputs say (runs "
                       f"playbooks/status.yml; exit code {EXIT_DRIFT} on drift, "
                       f"{EXIT_UNREACHED} when a host is not reached)")
    p.add_argument("-i", "--inventory", metavar="PATH",
                   help="inventory folder with mesh.yml (default: ansible.cfg's inventory)")
    p.add_argument("-l", "--limit", metavar="HOSTS", help="only these hosts (Ansible pattern)")
    p.set_defaults(func=cmd_status)


def cmd_agent(args) -> int:
    from ansible_collections.wgmesh.mesh.plugins.module_utils import wgmesh_agent

    return wgmesh_agent.main(["--state-dir", args.state_dir])


def cmd_completion(args) -> int:
    import shtab

    from wgmesh.cli import build_parser  # the whole CLI, of which this is a part

    parser = build_parser()
    # Paths complete as paths: every option or argument that takes one says so by its
    # metavar or type.
    todo = [parser]
    while todo:
        p = todo.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += action.choices.values()
            elif action.metavar == "DIR":
                action.complete = shtab.DIRECTORY
            elif action.metavar in ("PATH", "FILE") or action.type is Path:
                action.complete = shtab.FILE
    print(shtab.complete(parser, shell=args.shell), end="")
    return EXIT_OK


def cmd_status(args) -> int:
    """The status play, from the project folder: its report, and its exit code for CI and
    monitoring."""
    project = project_folder("playbooks/status.yml")
    if project is None:
        return EXIT_INPUT
    argv = [str(Path(sys.executable).parent / "ansible-playbook"),
            "-i", str(Path(args.inventory).resolve()), "playbooks/status.yml"]
    if args.limit:
        argv += ["--limit", args.limit]
    # The play's report as it comes, and its verdict: drift (the play's own assertion) is
    # told apart from a host that was not reached or a run that broke.
    drift = False
    with subprocess.Popen(argv, cwd=project, stdout=subprocess.PIPE, text=True,
                          bufsize=1) as play:
        for line in play.stdout:
            sys.stdout.write(line)
            drift = drift or DRIFT_MESSAGE in line
    if play.returncode == 0:
        return EXIT_OK
    return EXIT_DRIFT if drift else EXIT_UNREACHED
