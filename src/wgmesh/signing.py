"""Changes signed by M of N admins.

A manifest states one state of the mesh: the SHA-256 of its three inputs (mesh.yml, the
lockfile, the policy), the SHA-256 of every host's bundle compiled from them (so a host can
check the bundle it is given without compiling), the admins and threshold that sign the next
one, the date the mesh is compiled as of (node expiry), and a serial that only grows.
Admins sign the manifest's canonical JSON with ed25519 keys; the signatures sit beside it in
the same file, in git beside the inputs.

A host holds the admin public keys, the threshold and the highest serial it ran (its trust
file, written at enrolment). It runs a bundle only when the manifest has enough valid
signatures of admins it trusts, names no other key, has no lower serial than the one it ran,
and lists that bundle's digest under the host's name. A manifest naming other admins or
another threshold changes the host's trust, once the current ones signed it.

plugins/modules/wgmesh_apply.py checks the same rules on the host, in its own code (a module
is self-contained); tests/unit/test_signing.py holds both to the same verdicts.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import subprocess
from pathlib import Path

from nacl.signing import SigningKey

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    bundle_digest,
    canonical,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_trust import (
    FORMAT,
    Refused,
    check_shape,
    valid_trust,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_trust import (
    verify as verify_signed,
)
from wgmesh import grammar
from wgmesh.errors import InputError, Problem, read_text, write_atomic

MAX_MANIFEST_BYTES = 64 << 20



def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trust_of(b) -> dict:
    """The trust mesh.yml's signing section states: what hosts install at enrolment."""
    s = b.mesh.signing
    return {"threshold": s.threshold, "admins": dict(s.admins)}


def load_trust(path: Path) -> dict:
    """A trust file (`wgmesh manifest trust`, or a host's /etc/wgmesh/trust.json)."""
    try:
        trust = json.loads(read_text(path, str(path), 1 << 20))
    except ValueError:
        trust = None
    if not valid_trust(trust):
        raise InputError([Problem(str(path), 1, 1, "", "is not a trust: admins (name to "
                                  "public key, each key once) and a threshold from 1 to "
                                  "their number", "use what `wgmesh manifest trust` prints")])
    return trust


# -- admin keys ---------------------------------------------------------------------------

def new_admin_key(path: Path) -> str:
    """Make an ed25519 key: its seed in ``path`` (0600, never overwritten); returns the
    public key for mesh.yml's signing.admins."""
    key = SigningKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(bytes(key)).decode() + "\n")
    return public_of(key)


def public_of(key: SigningKey) -> str:
    return base64.b64encode(bytes(key.verify_key)).decode()


def read_admin_key(path: Path) -> SigningKey:
    text = read_text(path, str(path), 1024).strip()
    if not grammar.public_key(text):  # 32 bytes of base64, like a public key
        raise InputError([Problem(str(path), 1, 1, "", "is not an admin key",
                                  "pass the file `wgmesh admin keygen --out` wrote")])
    return SigningKey(base64.b64decode(text))


# -- manifests ----------------------------------------------------------------------------

def _require_signing(b) -> None:
    if b.mesh.signing is None:
        raise InputError([Problem(str(b.mesh.path), 1, 1, "signing", "mesh.yml has no signing "
                                  "section", "add signing: {threshold: M, admins: {name: "
                                  "public key}} (see docs/security.md)")])


def compile_body(b, serial: int, date: dt.date) -> dict:
    """The manifest of build ``b`` (compiled as of ``date``); every managed node must have
    its key pinned (a bundle is signed for one key)."""
    _require_signing(b)
    res = b.resolution
    unpinned = sorted(n for n in res.names
                      if b.mesh.nodes[n].managed and not b.alloc[n].public_key
                      and n not in res.expired)
    if unpinned:
        raise InputError([Problem(str(b.lock.path), 1, 1, "nodes", f"no public key pinned for "
                                  f"{', '.join(unpinned)}: a signed bundle is made for one key",
                                  "enrol each: on the host `wgmesh host enrol`, then `wgmesh "
                                  "enrol NODE PUBLIC_KEY` here")])
    bundles = {}
    for name in res.names:
        if b.mesh.nodes[name].managed and name not in res.expired:
            bundle = b.bundle(name)
            bundles[name] = bundle_digest(bundle)
    return {
        "format": FORMAT,
        "serial": serial,
        "date": date.isoformat(),
        "inputs": inputs_of(b),
        "trust": trust_of(b),
        "bundles": bundles,
    }


def inputs_of(b) -> dict:
    return {"mesh": file_digest(b.mesh.path), "lockfile": file_digest(b.lock.path),
            "policy": file_digest(b.policy.path)}


def load(path: Path) -> dict:
    """A manifest file as written (shape checked; signatures not)."""
    text = read_text(path, str(path), MAX_MANIFEST_BYTES)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError([Problem(str(path), 1, 1, "", f"is not JSON: {exc}",
                                  "make it again with `wgmesh manifest create`")]) from exc
    try:
        check_shape(data)
    except Refused as exc:
        raise InputError([Problem(str(path), 1, 1, "", str(exc),
                                  "make it again with `wgmesh manifest create`")]) from exc
    return data


def committed(path: Path) -> dict | None:
    """The manifest as git's HEAD has it (what hosts run until this one takes effect), or
    None outside git or before the first commit of it."""
    out = subprocess.run(["git", "-C", str(path.parent), "show", f"HEAD:./{path.name}"],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return None
    try:
        data = json.loads(out.stdout)
        check_shape(data)
    except (ValueError, Refused):
        return None
    return data["manifest"]


def changes(before: dict, after: dict) -> list[str]:
    """What a manifest changes against the one before it, in words, for its signers."""
    lines = [f"against serial {before['serial']}, dated {before['date']}"]
    if after["date"] < before["date"]:
        lines.append(f"DATE GOES BACK: {before['date']} -> {after['date']} (hosts refuse it)")
    elif after["date"] != before["date"]:
        lines.append(f"date {before['date']} -> {after['date']}")
    for name in ("mesh", "lockfile", "policy"):
        if before["inputs"].get(name) != after["inputs"].get(name):
            lines.append(f"{name} changed")
    a, b = before["bundles"], after["bundles"]
    for label, hosts in (("hosts added", sorted(set(b) - set(a))),
                         ("hosts removed", sorted(set(a) - set(b))),
                         ("hosts whose bundle changes",
                          sorted(h for h in set(a) & set(b) if a[h] != b[h]))):
        if hosts:
            lines.append(f"{label}: {', '.join(hosts)}")
    if before["trust"] != after["trust"]:
        lines.append(f"admins and threshold change: {sorted(before['trust']['admins'])} "
                     f"({before['trust']['threshold']}) -> {sorted(after['trust']['admins'])} "
                     f"({after['trust']['threshold']})")
    if len(lines) == 1:
        lines.append("nothing else changes")
    return lines


def save(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n", None)


def sign(data: dict, key: SigningKey) -> str:
    """Add the signature of ``key`` (an admin the manifest's trust names); returns the name."""
    public = public_of(key)
    names = [n for n, k in data["manifest"]["trust"]["admins"].items() if k == public]
    if not names:
        raise Refused(f"the key of public key {public} is not one of the manifest's admins")
    signature = key.sign(canonical(data["manifest"])).signature
    data["signatures"][names[0]] = base64.b64encode(signature).decode()
    return names[0]


def verify(data: dict, trust: dict, seen: dict | None = None) -> list[str]:
    """Check a signed manifest against a trust (admins, threshold) and what a host last ran
    (``seen``: serial, digest, date): the hosts' rules (plugins/module_utils/wgmesh_trust).
    Returns the admins whose signatures hold; raises Refused with the reason otherwise."""
    return verify_signed(data, trust, seen)[0]


def manifest_digest(data: dict) -> str:
    return hashlib.sha256(canonical(data["manifest"])).hexdigest()


def check_inputs(b, data: dict) -> list[str]:
    """How build ``b``'s inputs differ from those the manifest states (empty: they match)."""
    stated, have = data["manifest"]["inputs"], inputs_of(b)
    names = {"mesh": b.mesh.path, "lockfile": b.lock.path, "policy": b.policy.path}
    return [f"{names[k]} is not the file the manifest was made from"
            for k in sorted(names) if stated.get(k) != have[k]]


def as_of(data: dict) -> dt.date:
    return dt.date.fromisoformat(data["manifest"]["date"])
