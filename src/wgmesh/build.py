"""The one entry point every adapter calls: inputs in, a compiled mesh out, and what each
host receives (``Build.bundle``).

The CLI, the inventory plugin and the action plugins all go through ``build`` so they can
never disagree about what a mesh means. The policy's own tests live in policytests, what a
query names in queries.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from wgmesh import policytests, render
from wgmesh.compile.compiler import Compiler, fewer_gc_passes
from wgmesh.compile.evaluate import Evaluator
from wgmesh.compile.hostoutput import HostOutput
from wgmesh.compile.resolve import Resolution
from wgmesh.errors import InputError, Problem
from wgmesh.lock import Allocation, Lock
from wgmesh.mesh import Mesh, load_mesh
from wgmesh.mesh import resolve_path as resolve_mesh_path
from wgmesh.policy import Policy, load_policy
from wgmesh.yamlsource import YamlSource


@dataclass
class Build:
    mesh: Mesh
    policy: Policy
    lock: Lock
    alloc: dict[str, Allocation]
    compiler: Compiler
    today: dt.date | None = None
    # The signed manifest (mesh.yml with a signing section, once one was made).
    manifest: dict | None = None

    @property
    def resolution(self) -> Resolution:
        """Who is who (identities, approvals, rules): what queries, plans and pictures read."""
        return self.compiler.res

    @property
    def evaluator(self) -> Evaluator:
        return Evaluator(self.compiler.res)

    @property
    def warnings(self) -> list[str]:
        """Every warning of the mesh, those compiling hosts found so far included."""
        return self.compiler.warnings

    def hosts(self, names: Iterable[str] | None = None, *, filters: bool = True
              ) -> Iterator[tuple[str, HostOutput]]:
        """Each node's output (every node's, devices too, unless ``names`` are given), one
        at a time so a large mesh is never held whole, with the garbage collector's passes
        spaced out while they are compiled (compiler.fewer_gc_passes)."""
        with fewer_gc_passes():
            for name in self.resolution.names if names is None else names:
                yield name, self.compiler.host(name, filters)

    def bundle(self, name: str, commit: str | None = None, host: HostOutput | None = None
               ) -> dict:
        """What host ``name`` receives (render.bundle): compiled here unless ``host`` is its
        output already (from ``hosts``)."""
        return render.bundle(host or self.compiler.host(name), self.mesh.network,
                             self.alloc[name].public_key, commit)


def load_inputs(inventory: str | Path, policy: str | Path | None = None) -> tuple[Mesh, Policy]:
    """Load mesh.yml and its policy, reporting the problems of both at once."""
    problems: list[Problem] = []
    mesh = pol = None
    try:
        mesh = load_mesh(inventory)
    except InputError as exc:
        problems += exc.problems
    policy_path = Path(policy) if policy else (mesh.policy_path if mesh
                                               else _policy_hint(inventory))
    if policy_path is None and mesh is not None:
        problems.append(Problem(str(mesh.path), 1, 1, "policy", "no policy file",
                                "add policy: <path> to mesh.yml or pass --policy"))
    elif policy_path is not None:
        try:
            pol = load_policy(policy_path)
        except InputError as exc:
            problems += exc.problems
    if problems:
        raise InputError(problems)
    return mesh, pol


def _policy_hint(inventory: str | Path) -> Path | None:
    """The policy a broken mesh.yml names, so its problems are reported in the same run."""
    path = resolve_mesh_path(inventory)
    try:
        data = YamlSource(path).data
    except InputError:
        return None
    value = data.get("policy") if isinstance(data, dict) else None
    return (path.parent / value).resolve() if isinstance(value, str) and value else None


def build(inventory: str | Path, policy: str | Path | None = None, *,
          today: dt.date | None = None, run_tests: bool = True,
          keys: dict[str, str | None] | None = None, rotate: Iterable[str] = ()) -> Build:
    """Load, allocate and compile the mesh once.

    ``keys`` are the public keys hosts report (``wgmesh_compile``): pinned on first sight
    before anything is compiled, after the keys of the hosts in ``rotate`` that report one
    are forgotten. A reported key that is not a WireGuard public key is an input error naming
    the host; one that differs from the pinned key raises KeyMismatch. Nothing is written.
    """
    mesh, pol = load_inputs(inventory, policy)
    manifest = None
    if mesh.signing is not None and mesh.signing.manifest_path.exists():
        from wgmesh import signing

        manifest = signing.load(mesh.signing.manifest_path)
    if today is None:
        # A signed mesh is compiled as of its manifest's date, so that every host runs
        # what the admins signed: expiry takes effect with the next manifest.
        today = (signing.as_of(manifest) if manifest is not None
                 else dt.datetime.now(dt.UTC).date())
    lock = Lock(mesh.lock_path)
    alloc = lock.allocate(mesh)
    if keys:
        for name in sorted(set(rotate)):
            if name in mesh.nodes and keys.get(name):
                lock.unpin_key(name)
        _pin_reported(lock, mesh, keys, today)
        alloc = lock.allocate(mesh)
    comp = Compiler(mesh, pol, alloc, today)
    result = Build(mesh, pol, lock, alloc, comp, today, manifest)
    if run_tests:
        policytests.check(result)
    return result


def _pin_reported(lock: Lock, mesh: Mesh, keys: dict[str, str | None],
                  today: dt.date | None) -> None:
    mismatched = []
    for host, key in sorted(keys.items()):
        if host not in mesh.nodes or not key:  # no key yet (a bare host in check mode)
            continue
        pinned = lock.pin_key(host, key, today)
        if pinned is not None:
            mismatched.append(
                f"{host}: presents public key {key}, but {lock.path} pins {pinned}. "
                "A host's key changes only by rotation; if this host was rebuilt on "
                "purpose, remove its public_key line from the lockfile and run again.")
    if mismatched:
        raise KeyMismatch(mismatched)


class KeyMismatch(Exception):
    """A host presents a key other than the one pinned for it."""

    def __init__(self, messages: list[str]):
        self.messages = messages
        super().__init__("\n".join(messages))


def source_commit(b: Build) -> str | None:
    """The git commit the inputs come from, with "+changes" when any of them differs from it;
    None outside a git work tree (or without git)."""
    paths = [str(p) for p in (b.mesh.path, b.policy.path, b.lock.path)]
    try:
        head = subprocess.run(["git", "-C", str(b.mesh.path.parent), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(b.mesh.path.parent), "status", "--porcelain",
                                "--", *paths], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip()[:12] + ("+changes" if dirty.stdout.strip() else "")
