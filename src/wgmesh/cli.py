"""The ``wgmesh`` command.

Exit codes: 0 ok; 1 the requested state could not be reached (lab failure, failing policy
test); 2 usage or input error (every problem is printed, one per line, file:line:col first).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from wgmesh.errors import InputError
from wgmesh.lab.runtime import Lab, LabError
from wgmesh.lab.topology import load_topology

DEFAULT_LAB = "inventories/lab"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wgmesh", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    lab = sub.add_parser("lab", help="the test lab: real hosts in namespaces on this machine")
    lab_sub = lab.add_subparsers(required=True, metavar="ACTION")
    for name, func, text in [
        ("up", cmd_lab_up, "create the lab (idempotent) and print its hosts"),
        ("down", cmd_lab_down, "remove every namespace, link, process and file of the lab"),
        ("status", cmd_lab_status, "show each node and whether it runs"),
    ]:
        p = lab_sub.add_parser(name, help=text)
        _topology_arg(p)
        p.set_defaults(func=func)
    p = lab_sub.add_parser("exec", help="run a command inside a lab node (host, router, fabric)")
    _topology_arg(p)
    p.add_argument("node")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command (default: a shell)")
    p.set_defaults(func=cmd_lab_exec)
    return parser


def _topology_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--inventory", default=DEFAULT_LAB, metavar="PATH",
                   help="lab inventory directory or its topology.yml (default: %(default)s)")


def _lab(args) -> Lab:
    return Lab(load_topology(args.inventory))


def cmd_lab_up(args) -> int:
    lab = _lab(args)
    start = time.monotonic()
    lab.up()
    print(f"lab {lab.topo.name} up in {time.monotonic() - start:.2f} s")
    _print_status(lab)
    return 0


def cmd_lab_down(args) -> int:
    lab = _lab(args)
    start = time.monotonic()
    lab.down()
    print(f"lab {lab.topo.name} down in {time.monotonic() - start:.2f} s")
    return 0


def cmd_lab_status(args) -> int:
    lab = _lab(args)
    rows = _print_status(lab)
    return 0 if all(r.state.startswith("up") for r in rows) else 1


def _print_status(lab: Lab):
    rows = lab.status()
    width = max(len(r.name) for r in rows)
    for r in rows:
        print(f"  {r.name:<{width}}  {r.kind:<28} {r.address:<32} {r.state}")
    return rows


def cmd_lab_exec(args) -> int:
    lab = _lab(args)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    argv = lab.exec_argv(args.node, command or ["/bin/bash", "-l"])
    os.execvp(argv[0], argv)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
