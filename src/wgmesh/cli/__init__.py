"""The ``wgmesh`` command.

Exit codes: 0 ok; 1 the requested state could not be reached (lab failure, failing policy
test); 2 usage or input error (every problem is printed, one per line, file:line:col first).
"""

from __future__ import annotations

import argparse
import sys

from wgmesh import render
from wgmesh.cli import devices, hosts, inputs, lab, signing
from wgmesh.cli.common import (
    EXIT_DRIFT,
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_UNREACHED,
    default_inventory,
)
from wgmesh.errors import InputError, LabError, escape
from wgmesh.policytests import PolicyTestFailure

# The exit codes, the same for every command (the README's table).
__all__ = ["EXIT_DRIFT", "EXIT_FAILED", "EXIT_INPUT", "EXIT_OK", "EXIT_UNREACHED", "build_parser",
           "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "inventory", "") is None:
            args.inventory = default_inventory()
        return args.func(args)
    except InputError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_INPUT
    except PolicyTestFailure as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_FAILED
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except render.RenderError as exc:
        print(f"error: {escape(str(exc))}", file=sys.stderr)
        return EXIT_INPUT


def build_parser() -> argparse.ArgumentParser:
    from importlib import metadata

    parser = argparse.ArgumentParser(prog="wgmesh", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version",
                        version=f"wgmesh {metadata.version('wgmesh')}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    for group in (inputs, devices, signing, hosts, lab):
        group.register(sub)
    return parser
