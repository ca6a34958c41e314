"""Signed changes and the offline kit: kit, kit-sign, kit-verify, admin, manifest, enrol,
host (run on a host: enrol, pull)."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_keys import (
    public_of as wg_public_of,
)
from wgmesh import grammar
from wgmesh.build import build
from wgmesh.cli.common import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    build_from_args,
    mesh_args,
)
from wgmesh.errors import InputError, Problem, write_atomic


def register(sub) -> None:
    """The parsers of kit, admin, manifest, enrol and host."""
    p = sub.add_parser("kit", help="build the offline kit: project, wheels, Debian packages, "
                       "install.sh, manifest and checksums (see docs/air-gap.md)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--python", default=f"{sys.version_info[0]}.{sys.version_info[1]}",
                   metavar="X.Y[,X.Y]", help="Pythons the wheels are for (default: this one)")
    p.add_argument("--no-debs", action="store_true", help="leave the Debian packages out")
    p.set_defaults(func=cmd_kit)

    p = sub.add_parser("kit-sign", help="sign an offline kit as one of the admins "
                       "(SIGNATURES.json; hosts and sites install only kits M of N signed)")
    p.add_argument("kit", type=Path, metavar="DIR")
    p.add_argument("--key", required=True, type=Path, help="your admin key file")
    p.add_argument("--name", metavar="ADMIN", help="your admin name (default: the one "
                   "mesh.yml's signing.admins gives your key)")
    mesh_args(p)
    p.set_defaults(func=cmd_kit_sign)
    p = sub.add_parser("kit-verify", help="check an offline kit before installing it: the "
                       "admins' signatures, every file's digest, no file the sums do not list "
                       "(exit 1 when it does not hold)")
    p.add_argument("kit", type=Path, metavar="DIR")
    p.add_argument("--trust", type=Path, metavar="FILE", help="the admins to trust (a host's "
                   "/etc/wgmesh/trust.json, or what `wgmesh manifest trust` prints); without "
                   "it, mesh.yml's signing section")
    mesh_args(p)
    p.set_defaults(func=cmd_kit_verify)

    admin = sub.add_parser("admin", help="admin signing keys (changes signed by M of N)")
    admin_sub = admin.add_subparsers(required=True, metavar="ACTION")
    p = admin_sub.add_parser("keygen", help="make an ed25519 key (its file 0600, never "
                             "overwritten); print the public key for signing.admins")
    p.add_argument("--out", required=True, type=Path, metavar="FILE")
    p.set_defaults(func=cmd_admin_keygen)

    manifest = sub.add_parser("manifest", help="the signed manifest of the inputs: create, "
                              "sign, verify; the admins' trust for enrolment")
    man_sub = manifest.add_subparsers(required=True, metavar="ACTION")
    p = man_sub.add_parser("create", help="state the inputs and every host's bundle, with the "
                           "next serial, unsigned (as of today)")
    mesh_args(p)
    p.add_argument("--serial", type=int, metavar="N",
                   help="the serial (default: the current manifest's plus one)")
    p.set_defaults(func=cmd_manifest_create)
    p = man_sub.add_parser("sign", help="compile the inputs again, check the manifest states "
                           "them, and add this admin's signature")
    mesh_args(p)
    p.add_argument("--key", required=True, type=Path, metavar="FILE")
    p.set_defaults(func=cmd_manifest_sign)
    p = man_sub.add_parser("verify", help="the manifest states these inputs and bundles and "
                           "has enough valid signatures (exit 1 if not)")
    mesh_args(p)
    p.add_argument("--trust", type=Path, metavar="FILE",
                   help="judge the signatures with this trust file (a host's "
                   "/etc/wgmesh/trust.json) instead of mesh.yml's signing section")
    p.set_defaults(func=cmd_manifest_verify)
    p = man_sub.add_parser("trust", help="print the trust a host installs at enrolment")
    mesh_args(p)
    p.set_defaults(func=cmd_manifest_trust)

    p = sub.add_parser("enrol", help="pin a host's public key (from `wgmesh host enrol`) in "
                       "the lockfile, for a pull request")
    mesh_args(p)
    p.add_argument("node")
    p.add_argument("public_key")
    p.set_defaults(func=cmd_enrol)
    host = sub.add_parser("host", help="commands run on a host itself (pull mode)")
    host_sub = host.add_subparsers(required=True, metavar="ACTION")
    p = host_sub.add_parser("enrol", help="make this host's WireGuard key (kept if it exists), "
                            "install the admins' trust, print the public key")
    p.add_argument("--interface", default="wg0")
    p.add_argument("--key-dir", type=Path, default=Path("/etc/wireguard"))
    p.add_argument("--trust", type=Path, metavar="FILE",
                   help="the trust `wgmesh manifest trust` printed (installed only when the "
                   "host has none)")
    p.add_argument("--trust-file", type=Path, default=Path("/etc/wgmesh/trust.json"))
    p.add_argument("--pull", metavar="URL", help="pull mode: the repository to apply from "
                   "(with --node and --inventory); starts a systemd timer where systemd runs")
    p.add_argument("--node", help="this host's node name in mesh.yml")
    p.add_argument("--inventory", metavar="PATH", help="the inventory folder in the repository")
    p.add_argument("--branch", default="main")
    p.add_argument("--every", type=int, default=300, metavar="SECONDS")
    p.set_defaults(func=cmd_host_enrol)
    p = host_sub.add_parser("pull", help="apply this host's part of the mesh from the "
                            "repository's data now, with the installed project's pull play "
                            "(settings of `host enrol --pull`)")
    p.add_argument("--loop", type=int, metavar="SECONDS",
                   help="again and again, this many seconds apart (where systemd does not run)")
    p.add_argument("--config", type=Path, default=Path("/etc/wgmesh/pull.json"))
    p.set_defaults(func=cmd_host_pull)


def cmd_kit(args) -> int:
    from wgmesh import kit

    pythons = [v.strip() for v in args.python.split(",") if v.strip()]
    for v in pythons:
        if not re.fullmatch(r"3\.1[1-3]", v):
            print(f"error: --python {v}: wgmesh runs on Python 3.11 to 3.13", file=sys.stderr)
            return EXIT_INPUT
    manifest = kit.build(args.out, pythons, debs=not args.no_debs)
    print(f"kit in {args.out}: wgmesh {manifest['wgmesh_commit'][:12]}, "
          f"{sum(1 for f in manifest['files'] if f.startswith('wheels/'))} wheels for Python "
          f"{', '.join(pythons)}, {len(manifest['debian_packages'])} Debian packages; "
          f"install with: sh {args.out}/install.sh")
    return EXIT_OK


def _kit_trust(args) -> dict:
    from wgmesh import signing

    if getattr(args, "trust", None):
        return signing.load_trust(args.trust)
    b = build_from_args(args, run_tests=False)
    if b.mesh.signing is None:
        raise InputError([Problem(str(b.mesh.path), 0, 0, "signing", "mesh.yml has no "
                                  "signing section", "pass --trust FILE")])
    return signing.trust_of(b)


def cmd_kit_sign(args) -> int:
    from wgmesh import kit, signing

    trust = _kit_trust(args)
    key = signing.read_admin_key(args.key)
    mine = signing.public_of(key)
    name = args.name or next((n for n, k in trust["admins"].items() if k == mine), None)
    if name is None or trust["admins"].get(name) != mine:
        print(f"error: {args.key} is not the key of an admin of this mesh", file=sys.stderr)
        return EXIT_INPUT
    try:
        kit.sign(args.kit, name, args.key)
    except signing.Refused as exc:
        print(f"error: {args.kit}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.kit}: signed by {name}", file=sys.stderr)
    return EXIT_OK


def cmd_kit_verify(args) -> int:
    from wgmesh import kit, signing

    trust = _kit_trust(args)
    try:
        valid = kit.verify(args.kit, trust)
    except signing.Refused as exc:
        print(f"refused: {args.kit}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.kit}: every file as SHA256SUMS states it, signed by {', '.join(valid)} "
          f"(threshold {trust['threshold']}): install it with sh {args.kit}/install.sh")
    return EXIT_OK


def cmd_admin_keygen(args) -> int:
    from wgmesh import signing

    if args.out.exists():
        print(f"error: {args.out} exists: an admin key is never overwritten", file=sys.stderr)
        return EXIT_INPUT
    public = signing.new_admin_key(args.out)
    print(public)
    print(f"private key in {args.out} (mode 0600): keep it off the repository and the CI; "
          "add the public key to mesh.yml's signing.admins", file=sys.stderr)
    return EXIT_OK


def cmd_manifest_create(args) -> int:
    from wgmesh import signing

    b = build(args.inventory, args.policy, run_tests=True,
              today=args.today or dt.datetime.now(dt.UTC).date())
    if b.lock.changed:
        print(f"error: {b.lock.path} is not up to date with mesh.yml: run `wgmesh lock` (and "
              "enrol new hosts) first, then create the manifest", file=sys.stderr)
        return EXIT_INPUT
    old = b.manifest["manifest"]["serial"] if b.manifest else 0
    serial = args.serial if args.serial is not None else old + 1
    if serial <= old:
        print(f"error: serial {serial} is not above the current one ({old}): hosts would "
              "refuse it", file=sys.stderr)
        return EXIT_INPUT
    if b.manifest and b.today.isoformat() < b.manifest["manifest"]["date"]:
        print(f"error: {b.today} is earlier than the current manifest's date "
              f"({b.manifest['manifest']['date']}): hosts would refuse it (a node that "
              "expired would come back)", file=sys.stderr)
        return EXIT_INPUT
    data = {"manifest": signing.compile_body(b, serial, b.today), "signatures": {}}
    signing.save(b.mesh.signing.manifest_path, data)
    print(f"{b.mesh.signing.manifest_path}: serial {serial}, as of {b.today}, "
          f"{len(data['manifest']['bundles'])} host bundles; needs "
          f"{b.mesh.signing.threshold} signatures (`wgmesh manifest sign --key FILE`)")
    return EXIT_OK


def _signed_build(args):
    b = build_from_args(args)
    if b.mesh.signing is None or b.manifest is None:
        raise InputError([Problem(str(b.mesh.path), 1, 1, "signing", "no manifest",
                                  "add a signing section to mesh.yml, then `wgmesh manifest "
                                  "create`")])
    return b


def _stale(b) -> list[str]:
    """How the manifest differs from what its inputs compile to."""
    from wgmesh import signing

    body = b.manifest["manifest"]
    problems = signing.check_inputs(b, b.manifest)
    if not problems:
        want = signing.compile_body(b, body["serial"], signing.as_of(b.manifest))
        if want != body:
            problems = ["the bundles or trust it states are not what its inputs compile to"]
    return problems


def cmd_manifest_sign(args) -> int:
    from wgmesh import signing

    b = _signed_build(args)
    key = signing.read_admin_key(args.key)
    stale = _stale(b)
    if stale:
        for line in stale:
            print(f"error: {b.mesh.signing.manifest_path}: {line}", file=sys.stderr)
        print("error: nothing signed: make it again with `wgmesh manifest create`",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        name = signing.sign(b.manifest, key)
    except signing.Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    body = b.manifest["manifest"]
    # What the signer vouches for, against the manifest committed before (hosts run that).
    print(f"manifest serial {body['serial']}, dated {body['date']} (hosts judge node expiry "
          "as of this date)")
    previous = signing.committed(b.mesh.signing.manifest_path)
    for line in (signing.changes(previous, body) if previous else
                 ["no committed manifest to compare with"]):
        print(f"  {line}")
    signing.save(b.mesh.signing.manifest_path, b.manifest)
    print(f"signed serial {body['serial']} as {name}: {len(b.manifest['signatures'])} of "
          f"{body['trust']['threshold']} needed")
    return EXIT_OK


def cmd_manifest_verify(args) -> int:
    from wgmesh import signing

    b = _signed_build(args)
    stale = _stale(b)
    trust = signing.trust_of(b)
    if args.trust:
        trust = signing.load_trust(args.trust)
    try:
        names = signing.verify(b.manifest, trust)
    except signing.Refused as exc:
        stale.append(str(exc))
    body = b.manifest["manifest"]
    if stale:
        for line in stale:
            print(f"refused: serial {body['serial']}: {line}")
        return EXIT_FAILED
    print(f"ok: serial {body['serial']} as of {body['date']}, signed by {', '.join(names)} "
          f"({trust['threshold']} needed); states these inputs and "
          f"{len(body['bundles'])} bundles")
    return EXIT_OK


def cmd_manifest_trust(args) -> int:
    from wgmesh import signing

    b = build_from_args(args, run_tests=False)
    if b.mesh.signing is None:
        print(f"error: {b.mesh.path} has no signing section", file=sys.stderr)
        return EXIT_INPUT
    print(json.dumps(signing.trust_of(b), indent=1, sort_keys=True))
    return EXIT_OK


def cmd_enrol(args) -> int:
    from wgmesh.build import KeyMismatch

    if not grammar.public_key(args.public_key):
        print(f"error: {args.public_key[:60]!r} is not a WireGuard public key", file=sys.stderr)
        return EXIT_INPUT
    try:
        b = build(args.inventory, args.policy, run_tests=False,
                  keys={args.node: args.public_key})
    except KeyMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.node not in b.mesh.nodes or not b.mesh.nodes[args.node].managed:
        print(f"error: {args.node} is not a managed node of {b.mesh.path}: add it there first",
              file=sys.stderr)
        return EXIT_INPUT
    changed = b.lock.save()
    print(f"{args.node}: public key {args.public_key} "
          f"{'pinned in' if changed else 'already pinned in'} {b.lock.path}; commit it" +
          (", then make and sign a new manifest" if b.mesh.signing else ""))
    return EXIT_OK


def cmd_host_pull(args) -> int:
    from wgmesh import pull

    return pull.run(args.config, args.loop)


def cmd_host_enrol(args) -> int:
    from wgmesh import device, pull, signing

    conf = None
    if args.pull:
        if not (args.node and args.inventory):
            print("error: --pull needs --node and --inventory", file=sys.stderr)
            return EXIT_INPUT
        conf = pull.settings(args.pull, args.node, args.inventory, args.branch, args.every)
    if not grammar.matches(grammar.IFNAME, args.interface):
        print(f"error: {args.interface!r} is not an interface name", file=sys.stderr)
        return EXIT_INPUT
    trust = None  # checked before anything is written
    if args.trust and args.trust_file.exists():
        print(f"{args.trust_file} kept: only a manifest its admins signed changes it",
              file=sys.stderr)
    elif args.trust:
        trust = signing.load_trust(args.trust)
    key = args.key_dir / f"{args.interface}.key"
    if key.exists():
        public = wg_public_of(device.read_private_key(key))
    else:
        args.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        private, public = device.new_key_pair()
        write_atomic(key, private + "\n", 0o600)
    if trust is not None:
        args.trust_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.trust_file, json.dumps(
            {"admins": trust["admins"], "threshold": trust["threshold"], "serial": 0,
             "digest": None}, sort_keys=True), 0o644)
    if conf is not None:
        print(f"pull mode: {pull.install(conf)}", file=sys.stderr)
    print(public)
    return EXIT_OK
