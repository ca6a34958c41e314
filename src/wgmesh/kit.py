"""The offline kit: everything a site without network needs to run wgmesh, in one folder.

    wgmesh kit --out DIR [--python 3.11,3.12] [--no-debs]

DIR gets the project at one commit (``project.tar``: site.yml, roles, plugins, playbooks,
inventories, policies), wheels of wgmesh and every package it runs with (for each Python
asked for), the Debian packages the hosts and the controller install with everything they
depend on, ``install.sh`` (no network needed: checks the sums, installs the packages, makes a
venv from the wheels, unpacks the project), ``manifest.json`` (what is in it, from which
commit, for which Pythons) and ``SHA256SUMS`` (``sha256sum -c SHA256SUMS``).
Building the kit needs the package registries (pip and apt, as set up on this machine);
using it needs nothing but the folder.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from wgmesh.errors import LabError

# What the hosts install (wgmesh_key names missing tools; the role installs them) and what
# the controller needs besides Python packages.
HOST_PACKAGES = ("wireguard-tools", "wireguard-go", "nftables", "dnsmasq-base", "iproute2",
                 "python3-nacl",  # checks signed manifests
                 "git", "python3-venv")  # pull mode
CONTROLLER_PACKAGES = ("python3", "python3-venv", "openssh-client")

# The files of a kit that SHA256SUMS does not list: itself, and the admins' signatures of it.
UNLISTED = ("SHA256SUMS", "SIGNATURES.json")

INSTALL = r"""#!/bin/sh
# Install wgmesh from this kit with no network: check the sums, refuse any file they do not
# list, and on a host that trusts admins (/etc/wgmesh/trust.json, or WGMESH_TRUST) any kit
# they did not sign, checked by the wgmesh already installed in TARGET; then install the
# Debian packages (as root, when the kit has them), make a venv from the wheels, unpack the
# project. Elsewhere verify a signed kit first: wgmesh kit-verify KIT -i INVENTORY
#   sh install.sh [--python-only] [TARGET]   (TARGET: ./wgmesh; its venv is TARGET/.venv)
set -eu
DEBS=yes
if [ "${1:-}" = "--python-only" ]; then DEBS=no; shift; fi
KIT=$(cd "$(dirname "$0")" && pwd)
TARGET=${1:-$PWD/wgmesh}
case $TARGET in /*) ;; *) TARGET=$PWD/$TARGET ;; esac
cd "$KIT"
sha256sum -c --quiet --strict SHA256SUMS
# Only what the sums list: an extra .deb or wheel would be installed unchecked.
listed=$(mktemp) present=$(mktemp)
sed 's/^[0-9a-f]\{64\}  //' SHA256SUMS | sort > "$listed"
find . -type f ! -path ./SHA256SUMS ! -path ./SIGNATURES.json | sed 's|^[.]/||' | sort > "$present"
extra=$(comm -13 "$listed" "$present")
rm -f "$listed" "$present"
if [ -n "$extra" ]; then
    echo "refusing to install: not listed in SHA256SUMS:" $extra >&2
    exit 1
fi
TRUST=${WGMESH_TRUST:-/etc/wgmesh/trust.json}
if [ -f "$TRUST" ]; then
    if [ ! -x "$TARGET/.venv/bin/wgmesh" ]; then
        echo "refusing to install: this host trusts admins ($TRUST) and has no wgmesh in" \
             "$TARGET to check the kit's signatures with (check it with wgmesh kit-verify" \
             "elsewhere, then install with WGMESH_TRUST=none)" >&2
        exit 1
    fi
    "$TARGET/.venv/bin/wgmesh" kit-verify "$KIT" --trust "$TRUST"
fi
if [ "$DEBS" = yes ] && [ -d debs ] && [ "$(id -u)" = 0 ]; then
    # What hosts and controllers install (debs/wanted), with apt's only source the kit's
    # packages (debs/Packages indexes them) in lists of their own: the host's lists may name
    # the same versions in an archive it cannot reach.
    apt=$(mktemp -d)
    mkdir "$apt/lists" "$apt/lists/partial" "$apt/parts"
    echo "deb [trusted=yes] file:$KIT/debs ./" > "$apt/kit.list"
    set -- -o Dir::Etc::SourceList="$apt/kit.list" -o Dir::Etc::SourceParts="$apt/parts" \
        -o Dir::State::Lists="$apt/lists"
    apt-get update -qq "$@"
    apt-get install -y -qq --no-install-recommends "$@" $(cat debs/wanted)
    rm -r "$apt"
fi
mkdir -p "$TARGET"
tar -xf "$KIT/project.tar" -C "$TARGET"
python3 -m venv "$TARGET/.venv"
"$TARGET/.venv/bin/pip" install -q --no-index --find-links "$KIT/wheels" wgmesh
echo "wgmesh installed in $TARGET (commands in $TARGET/.venv/bin)"
"""


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise LabError(f"{' '.join(argv[:4])} ...: {(out.stderr or out.stdout).strip()[-600:]}")
    return out


def project_root() -> Path:
    """The project this wgmesh runs from (its git work tree)."""
    here = Path(__file__).resolve().parent
    top = _run(["git", "-C", str(here), "rev-parse", "--show-toplevel"]).stdout.strip()
    return Path(top)


def runtime_requirements(root: Path) -> list[str]:
    """wgmesh's pinned dependencies (pyproject.toml), not the test tools."""
    with open(root / "pyproject.toml", "rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def _installed() -> set[str]:
    out = _run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n"])
    return {line.split()[0] for line in out.stdout.splitlines() if line.endswith(" installed")}


def _depends(packages: list[str]) -> dict[str, list[list[str]]]:
    """Each package's dependencies as groups of alternatives (a virtual package stands for
    its providers), from apt's cache on this machine, in one call."""
    out = _run(["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
                "--no-breaks", "--no-replaces", "--no-enhances", *packages])
    found: dict[str, list[list[str]]] = {}
    groups: list[list[str]] = []
    open_group = False
    for line in out.stdout.splitlines():
        if not line.startswith(" "):  # the next package's block
            groups, open_group = found.setdefault(line.strip(), []), False
        elif line.startswith("    "):  # a provider of the dependency just read
            if groups and groups[-1] and groups[-1][-1].startswith("<"):
                groups[-1].append(line.strip())
        else:
            kind, _, name = line.strip().partition(": ")
            if kind.lstrip("|") not in ("Depends", "PreDepends"):
                continue
            if open_group:
                groups[-1].append(name)
            else:
                groups.append([name])
            open_group = kind.startswith("|")
    return {p: [[n for n in g if not n.startswith("<")] for g in gs] for p, gs in found.items()}


def deb_closure(packages: tuple[str, ...]) -> list[str]:
    """The packages and everything they depend on (no recommends), choosing among
    alternatives and providers the one this machine has installed, else the first."""
    installed = _installed()
    want: set[str] = set()
    level = sorted(set(packages))
    while level:
        want.update(level)
        nxt = set()
        for groups in _depends(level).values():
            for group in groups:
                if group and not any(n in want or n in nxt for n in group):
                    nxt.add(next((n for n in group if n in installed), group[0]))
        level = sorted(nxt - want)
    return sorted(want)


def packages_index(debs: Path) -> str:
    """The folder's apt index (a flat repository): each package's control fields, where its
    file is, and the file's size and SHA-256, so apt installs from the kit alone."""
    out = []
    for deb in sorted(debs.glob("*.deb")):
        control = _run(["dpkg-deb", "-f", str(deb)]).stdout.rstrip("\n")
        data = deb.read_bytes()
        out.append(f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                   f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    return "\n".join(out)


def build(out: Path, pythons: list[str], debs: bool = True) -> dict:
    root = project_root()
    out.mkdir(parents=True, exist_ok=True)
    (out / "SIGNATURES.json").unlink(missing_ok=True)  # signed another kit
    commit = _run(["git", "-C", str(root), "rev-parse", "HEAD"]).stdout.strip()
    _run(["git", "-C", str(root), "archive", "--format=tar", "-o", str(out / "project.tar"),
          commit])
    wheels = out / "wheels"
    wheels.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    # The wheel is built from the commit (not the work tree, which it would also litter).
    with tempfile.TemporaryDirectory() as tmp:
        _run(["tar", "-xf", str(out / "project.tar"), "-C", tmp])
        _run([*pip, "wheel", "-q", "--no-deps", "-w", str(wheels), tmp])
    reqs = runtime_requirements(root)
    for version in pythons:
        _run([*pip, "download", "-q", "-d", str(wheels), "--only-binary=:all:",
              "--python-version", version, "-c", str(root / "constraints.txt"), *reqs])
    packages = []
    if debs:
        (out / "debs").mkdir(exist_ok=True)
        packages = deb_closure(HOST_PACKAGES + CONTROLLER_PACKAGES)
        _run(["apt-get", "download", "-qq", *packages], cwd=out / "debs")
        (out / "debs/Packages").write_text(packages_index(out / "debs"))
        (out / "debs/wanted").write_text("".join(
            f"{p}\n" for p in sorted(set(HOST_PACKAGES + CONTROLLER_PACKAGES))))
    (out / "install.sh").write_text(INSTALL)
    (out / "install.sh").chmod(0o755)
    files = sorted(p for p in out.rglob("*") if p.is_file()
                   and str(p.relative_to(out)) not in (*UNLISTED, "manifest.json"))
    sums = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    manifest = {"wgmesh_commit": commit,
                "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "pythons": pythons, "requirements": reqs, "debian_packages": packages,
                "host_packages": list(HOST_PACKAGES),
                "controller_packages": list(CONTROLLER_PACKAGES), "files": sums}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    sums["manifest.json"] = hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    (out / "SHA256SUMS").write_text("".join(f"{h}  {p}\n" for p, h in sorted(sums.items())))
    return manifest


# -- signed kits ------------------------------------------------------------------------------
# What an admin signs: SHA256SUMS, which lists every other file with its digest, under a
# prefix of its own so that a kit's signature can never pass for a manifest's.
KIT_SIGNED = b"wgmesh kit, format 1\n"


def _signed_message(kit: Path) -> bytes:
    return KIT_SIGNED + (kit / "SHA256SUMS").read_bytes()


def sign(kit: Path, name: str, key_file: Path) -> None:
    """Add ``name``'s signature of the kit (SIGNATURES.json beside SHA256SUMS)."""
    from wgmesh import signing

    verify_sums(kit)
    key = signing.read_admin_key(key_file)
    path = kit / "SIGNATURES.json"
    sigs = json.loads(path.read_text())["signatures"] if path.exists() else {}
    sigs[name] = base64.b64encode(key.sign(_signed_message(kit)).signature).decode()
    path.write_text(json.dumps({"format": 1, "signatures": dict(sorted(sigs.items()))},
                               indent=1) + "\n")


def verify_sums(kit: Path) -> None:
    """Every file the kit has is listed in SHA256SUMS with its digest, and nothing else is
    there; raises Refused naming what is not."""
    from wgmesh.signing import Refused

    listed = {}
    for line in (kit / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    present = {str(p.relative_to(kit)) for p in kit.rglob("*") if p.is_file()} - set(UNLISTED)
    extra, missing = sorted(present - set(listed)), sorted(set(listed) - present)
    if extra or missing:
        raise Refused("; ".join([*(["not listed in SHA256SUMS: " + ", ".join(extra)]
                                   if extra else []),
                                 *(["listed but missing: " + ", ".join(missing)]
                                   if missing else [])]))
    changed = [n for n, d in sorted(listed.items())
               if hashlib.sha256((kit / n).read_bytes()).hexdigest() != d]
    if changed:
        raise Refused("files that differ from SHA256SUMS: " + ", ".join(changed))


def verify(kit: Path, trust: dict) -> list[str]:
    """The admins whose signatures of the kit hold, when at least the trust's threshold do
    and every file is what SHA256SUMS says; raises Refused otherwise."""
    from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_trust import (
        Refused,
        check_signatures,
    )

    path = kit / "SIGNATURES.json"
    if not path.exists():
        raise Refused("the kit is not signed (no SIGNATURES.json)")
    try:
        sigs = json.loads(path.read_text())["signatures"]
    except (ValueError, KeyError, TypeError) as exc:
        raise Refused("SIGNATURES.json is not a kit's signatures") from exc
    if not isinstance(sigs, dict):
        raise Refused("SIGNATURES.json is not a kit's signatures")
    valid = check_signatures(_signed_message(kit), sigs, trust, "kit")
    verify_sums(kit)
    return valid

