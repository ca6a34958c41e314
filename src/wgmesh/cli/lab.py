"""The test lab: real hosts in network namespaces on this machine."""

from __future__ import annotations

import argparse
import os
import time

from wgmesh.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
)


def register(sub) -> None:
    """The parsers of the lab commands."""
    lab = sub.add_parser("lab", help="the test lab: real hosts in namespaces on this machine")
    lab_sub = lab.add_subparsers(required=True, metavar="ACTION")
    for name, func, text in [
        ("up", cmd_lab_up, "create the lab (idempotent) and print its hosts"),
        ("down", cmd_lab_down, "remove every namespace, link, process and file of the lab"),
        ("status", cmd_lab_status, "show each node and whether it runs"),
        ("agents", cmd_lab_agents, "start the NAT traversal agent and the monitor on the "
         "hosts that have them and no systemd to run them (after site.yml)"),
    ]:
        p = lab_sub.add_parser(name, help=text)
        _topology_arg(p)
        p.set_defaults(func=func)
    p = lab_sub.add_parser("exec", help="run a command inside a lab node (host, router, fabric)")
    _topology_arg(p)
    p.add_argument("node")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command (default: a shell)")
    p.set_defaults(func=cmd_lab_exec)


def _topology_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--inventory", metavar="PATH",
                   help="lab inventory directory or its topology.yml (default: ansible.cfg's "
                   "inventory)")


def _lab(args):
    from wgmesh.lab.runtime import Lab  # only the lab commands need it
    from wgmesh.lab.topology import load_topology

    return Lab(load_topology(args.inventory))


def cmd_lab_up(args) -> int:
    lab = _lab(args)
    start = time.monotonic()
    lab.up()
    print(f"lab {lab.topo.name} up in {time.monotonic() - start:.2f} s")
    _print_status(lab)
    return EXIT_OK


def cmd_lab_down(args) -> int:
    lab = _lab(args)
    start = time.monotonic()
    lab.down()
    print(f"lab {lab.topo.name} down in {time.monotonic() - start:.2f} s")
    return EXIT_OK


def cmd_lab_status(args) -> int:
    lab = _lab(args)
    rows = _print_status(lab)
    return EXIT_OK if all(r.state.startswith("up") for r in rows) else EXIT_FAILED


def _print_status(lab):
    rows = lab.status()
    width = max(len(r.name) for r in rows)
    for r in rows:
        print(f"  {r.name:<{width}}  {r.kind:<28} {r.address:<32} {r.state}")
    return rows


def cmd_lab_agents(args) -> int:
    lab = _lab(args)
    started = lab.start_agents()
    print("agent and monitor started on: " + (", ".join(started) if started else
                                              "none (running, or not installed: run "
                                              "site.yml first)"))
    return EXIT_OK


def cmd_lab_exec(args) -> int:
    lab = _lab(args)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    argv = lab.exec_argv(args.node, command or ["/bin/bash", "-l"])
    os.execvp(argv[0], argv)
    return EXIT_FAILED  # not reached
