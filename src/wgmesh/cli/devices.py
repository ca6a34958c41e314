"""Devices wgmesh does not manage (phones, laptops): device add, device config."""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_keys import (
    public_of as wg_public_of,
)
from wgmesh.cli.common import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    build_from_args,
    mesh_args,
    warn,
)
from wgmesh.errors import InputError, Problem, write_atomic


def register(sub) -> None:
    """The parsers of the device commands."""
    device = sub.add_parser("device", help="devices wgmesh does not manage (phones...): "
                            "enrol one, export its configuration")
    dev_sub = device.add_subparsers(required=True, metavar="ACTION")
    p = dev_sub.add_parser("add", help="make a key pair in memory, add the device to mesh.yml "
                           "and the lockfile, print its configuration and QR code once")
    mesh_args(p)
    p.add_argument("name")
    p.add_argument("--owner", metavar="USER", help="the user the device belongs to")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", dest="tags",
                   help="a tag for the device (repeatable)")
    _export_args(p)
    p.add_argument("--key-out", metavar="FILE", type=Path,
                   help="also write the private key to FILE (mode 0600); otherwise it is "
                   "shown once and kept nowhere")
    p.set_defaults(func=cmd_device_add)
    p = dev_sub.add_parser("config", help="the device's configuration as it is now (after a "
                           "policy change); with its key file, ready to import")
    mesh_args(p)
    p.add_argument("name")
    p.add_argument("--key-file", metavar="FILE", type=Path,
                   help="the private key (from --key-out); without it the configuration has "
                   "no PrivateKey line and no QR code")
    _export_args(p)
    p.set_defaults(func=cmd_device_config)


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-qr", action="store_true", help="no QR code in the terminal")
    p.add_argument("--qr-png", metavar="FILE", type=Path, help="the QR code as PNG (mode 0600)")
    p.add_argument("--qr-svg", metavar="FILE", type=Path, help="the QR code as SVG (mode 0600)")


def _check_secret_outputs(args) -> None:
    """Files that will hold a private key (--key-out, the QR codes) are new files in folders
    that exist, checked before anything is written: never an input, never half a change."""
    problems = []
    for option, path in (("--key-out", getattr(args, "key_out", None)),
                         ("--qr-png", args.qr_png), ("--qr-svg", args.qr_svg)):
        if path is None:
            continue
        if path.exists() or path.is_symlink():
            problems.append(Problem(str(path), 0, 0, option, "exists already; a private key "
                                    "is written only to a new file", "name a file that does "
                                    "not exist yet"))
        elif not path.parent.is_dir():
            problems.append(Problem(str(path), 0, 0, option, f"folder {path.parent} does not "
                                    "exist", "create it first, or name another file"))
    if problems:
        raise InputError(problems)


def cmd_device_add(args) -> int:
    from wgmesh import device

    _check_secret_outputs(args)
    before = build_from_args(args, run_tests=False)  # the mesh is sound before it is touched
    original = before.mesh.path.read_bytes()
    private, public = device.new_key_pair()
    if args.key_out:  # first: a key file that cannot be written leaves mesh.yml untouched
        fd = os.open(args.key_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(private + "\n")
    try:
        path = device.add_to_mesh(args.inventory, args.name, args.owner, args.tags, public)
        try:
            b = build_from_args(args, run_tests=False)
            # A QR code that cannot be made is refused before any output.
            made = None if args.name in b.resolution.expired else _configuration(args, b, private)
        except InputError:
            # The device does not fit the mesh (a tag its owner may not assign, a
            # configuration too large for a QR code...): undo.
            write_atomic(path, original, mode=None)
            raise
    except BaseException:
        if args.key_out:
            args.key_out.unlink(missing_ok=True)
        raise
    b.lock.save()
    b.lock.allocated = []  # pinned now
    print(f"{args.name} added to {path} (managed: false, public key {public}); "
          f"address pinned in {b.lock.path}. Commit both.", file=sys.stderr)
    unknown = [line for line in (made[1] if made else []) if "not known yet" in line]
    if unknown:
        keep = (f"the key is in {args.key_out}" if args.key_out else
                "wgmesh keeps no copy of the private key printed below: save it now to a file "
                "(or remove the device from mesh.yml and add it again with --key-out FILE)")
        print(f"warning: {len(unknown)} of its peers have no public key yet (their hosts have "
              f"not run site.yml), so this configuration leaves them out; {keep}; after "
              f"site.yml, `wgmesh device config {args.name} --key-file FILE` gives the whole "
              "configuration", file=sys.stderr)
    return _export(args, b, private, made)


def cmd_device_config(args) -> int:
    from wgmesh import device

    _check_secret_outputs(args)
    b = build_from_args(args, run_tests=False)
    node = b.mesh.nodes.get(args.name)
    if node is None or node.managed:
        print(f"error: {args.name} is not a device (managed: false) in {b.mesh.path}",
              file=sys.stderr)
        return EXIT_INPUT
    private = device.read_private_key(args.key_file) if args.key_file else None
    if private and wg_public_of(private) != b.alloc[args.name].public_key:
        print(f"error: {args.key_file} is not {args.name}'s key (its public key differs from "
              "the one in mesh.yml)", file=sys.stderr)
        return EXIT_INPUT
    return _export(args, b, private)


def _qr_wanted(args) -> bool:
    return not args.no_qr or args.qr_png is not None or args.qr_svg is not None


def _configuration(args, b, private: str | None) -> tuple[str, list[str], object]:
    """The device's configuration, the peers it leaves out, and its QR code when one is
    asked for (an input error when the configuration does not fit in one)."""
    from wgmesh import device

    text, left_out = device.client_config(b.compiler.host(args.name), b.mesh.network, private)
    code = device.qr(text, args.name) if private and _qr_wanted(args) else None
    return text, left_out, code


def _export(args, b, private: str | None, made: tuple | None = None) -> int:
    if args.name in b.resolution.expired:
        print(f"error: {args.name} has expired and has no peers", file=sys.stderr)
        return EXIT_FAILED
    text, left_out, code = made or _configuration(args, b, private)
    print(text)
    for line in left_out:
        print(f"# not reachable from this device: {line}")
    if code is not None and not args.no_qr:
        code.terminal(out=sys.stdout, compact=True)
    for path, kind in ((args.qr_png, "png"), (args.qr_svg, "svg")):
        if path is None:
            continue
        if code is None:
            print("error: no QR code without the private key (--key-file)", file=sys.stderr)
            return EXIT_INPUT
        buf = io.BytesIO()
        code.save(buf, kind=kind, scale=6)
        write_atomic(path, buf.getvalue(), 0o600)
    warn(b)
    return EXIT_OK
