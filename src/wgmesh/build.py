"""The one entry point every adapter calls: inputs in, a compiled mesh out.

The CLI, the inventory plugin and the action plugins all go through ``build`` so they can
never disagree about what a mesh means.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wgmesh import grammar
from wgmesh.compiler import Compiler
from wgmesh.errors import InputError, Problem, did_you_mean
from wgmesh.evaluate import Endpoint, Evaluator
from wgmesh.lock import Allocation, Lock
from wgmesh.mesh import Mesh, load_mesh
from wgmesh.mesh import resolve_path as resolve_mesh_path
from wgmesh.policy import PROTOCOLS, Policy, PolicyTest, SshTest, load_policy, split_hostport
from wgmesh.selectors import Kind, Selector
from wgmesh.yamlsource import YamlSource


class PolicyTestFailure(Exception):
    """The policy's own tests do not hold (exit code 1, not an input error)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


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
    def evaluator(self) -> Evaluator:
        return Evaluator(self.compiler)


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
    if run_tests and (pol.tests or pol.ssh_tests):
        digest = _input_digest(mesh, pol, lock, today)
        if not _passed_before(digest):
            failures = policy_test_failures(result)
            if failures:
                raise PolicyTestFailure(failures)
            _remember_pass(digest)
    return result


# Policy tests run once per input state: a pass is remembered under a digest of everything
# the verdicts depend on (the three files, the date nodes expire against, and wgmesh's own
# code), so the many commands a pipeline or a pull-mode host runs on one commit pay once.
# Only passes are kept; a cache that cannot be written is simply not used.
def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wgmesh" / "policy-tests"


@functools.cache
def _code_digest() -> bytes:
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.digest()


def _input_digest(mesh: Mesh, pol: Policy, lock: Lock, today: dt.date) -> str:
    h = hashlib.sha256(_code_digest())
    for path in (mesh.path, pol.path, lock.path):
        h.update(b"\0" + (path.read_bytes() if path.exists() else b""))
    h.update(today.isoformat().encode())
    return h.hexdigest()


def _passed_before(digest: str) -> bool:
    return (_cache_dir() / digest).exists()


def _remember_pass(digest: str) -> None:
    with contextlib.suppress(OSError):
        _cache_dir().mkdir(parents=True, exist_ok=True)
        (_cache_dir() / digest).touch()


def _endpoints(b: Build, sel: Selector) -> list[Endpoint]:
    """Every node a test selector names, or one identity standing for it when none does."""
    comp = b.compiler
    if sel.kind is Kind.PREFIX:
        return [comp.endpoint_of(str(sel.net.network_address))]
    mask = comp.masks(sel)[4]
    if mask:
        return [comp.endpoint_of(comp.names[i]) for i in range(len(comp.names)) if mask >> i & 1]
    if sel.kind is Kind.TAG:
        return [Endpoint(None, tags=frozenset({sel.name}))]
    if sel.kind is Kind.GROUP:
        return [Endpoint(None, user=u) for u in b.policy.groups.get(sel.name, ())]
    if sel.kind is Kind.TAGGED:
        return [Endpoint(None, tags=frozenset({"tag:*"}))]
    if sel.kind is Kind.USER:
        return [Endpoint(None, user=sel.name)]
    return []  # everyone, every member or a domain's users: no device to test


def _test_destination(b: Build, host: str) -> list[Endpoint]:
    """A test destination: a node name, a tag, a host alias or an address."""
    if host in b.compiler.index:
        return [b.compiler.endpoint_of(host)]
    if host.startswith("tag:"):
        return _endpoints(b, Selector(Kind.TAG, host, host))
    return [b.compiler.endpoint_of(host)]


def _run_test(b: Build, test: PolicyTest) -> list[str]:
    ev = b.evaluator
    proto = PROTOCOLS.get((test.proto or "tcp").lower()) or int(test.proto)
    failed = []
    srcs = _endpoints(b, test.src)
    for expect, dests in ((True, test.accept), (False, test.deny)):
        for dest in dests:
            host, port = split_hostport(dest)
            for one_src in srcs:
                for dst in _test_destination(b, host):
                    src = one_src
                    if src.addr is not None and dst.addr is not None and \
                            src.addr.version != dst.addr.version:
                        # A node stands for its address of the other side's family.
                        if dst.node:
                            dst = b.compiler.endpoint_of(dst.node, family=src.addr.version)
                        elif src.node:
                            src = b.compiler.endpoint_of(src.node, family=dst.addr.version)
                    # Tailscale's meaning: the network rules (port 22 of a node that runs
                    # SSH policy is also the ssh rules' business: sshTests judge those).
                    verdict = ev.network(src, dst, proto, int(port))
                    if verdict.allow != expect:
                        who = src.node or src.user or ",".join(sorted(src.tags)) or str(src.addr)
                        to = dst.node or str(dst.addr or host)
                        failed.append(f"{who} -> {to}:{port} is "
                                      f"{'denied' if expect else 'allowed'}"
                                      + (f" (by {verdict.rule})" if verdict.rule else "")
                                      + (f" ({verdict.note})" if verdict.note else "")
                                      + f", expected {'accept' if expect else 'deny'}")
    return failed


def _test_position(b: Build, origin: str) -> tuple[int, int]:
    return b.policy.where(tuple(int(x) if x.isdigit() else x
                                for x in origin.replace("[", ".").replace("]", "").split(".")))


def _unknown_destinations(b: Build) -> list[Problem]:
    """Test destinations that name no node, host alias or address: a deny test against a
    misspelt name would otherwise pass without testing anything."""
    problems = []
    for test in b.policy.ssh_tests:
        for j, dst in enumerate(test.dst):
            if (dst.startswith(("tag:", "autogroup:")) or "@" in dst or dst in b.mesh.nodes):
                continue
            origin = f"{test.origin}.dst[{j}]"
            line, col = _test_position(b, origin)
            problems.append(Problem(str(b.policy.path), line, col, origin,
                                    f'ssh test destination "{dst}": no node "{dst}"',
                                    did_you_mean(dst, b.mesh.nodes)))
    for test in b.policy.tests:
        for key, dests in (("accept", test.accept), ("deny", test.deny)):
            for j, dest in enumerate(dests):
                host = split_hostport(dest)[0]
                if (host.startswith("tag:") or host in b.mesh.nodes or host in b.policy.hosts
                        or grammar.ip_address(host) is not None):
                    continue
                origin = f"{test.origin}.{key}[{j}]"
                line, col = _test_position(b, origin)
                problems.append(Problem(
                    str(b.policy.path), line, col, origin,
                    f'test destination "{dest}": no node or host alias "{host}"',
                    did_you_mean(host, [*b.mesh.nodes, *b.policy.hosts])))
    return problems


def policy_test_failures(b: Build) -> list[Problem]:
    unknown = _unknown_destinations(b)
    if unknown:
        raise InputError(unknown)
    problems = []
    for test in [*b.policy.tests, *b.policy.ssh_tests]:
        run = _run_test if isinstance(test, PolicyTest) else _run_ssh_test
        for message in run(b, test):
            line, col = _test_position(b, test.origin)
            problems.append(Problem(str(b.policy.path), line, col, test.origin,
                                    f"test failed: {message}"))
    return problems


def _ssh_test_destinations(b: Build, dst: str, src: Endpoint) -> list[Endpoint]:
    comp = b.compiler
    if dst in comp.index:
        return [comp.endpoint_of(dst)]
    if dst == "autogroup:self":
        mine = comp.user_mask.get(src.user or "", 0) if not src.tags else 0
        return [comp.endpoint_of(comp.names[i]) for i in range(len(comp.names)) if mine >> i & 1]
    if dst.startswith("tag:"):
        sel = Selector(Kind.TAG, dst, dst)
    elif dst in ("autogroup:member", "autogroup:tagged"):
        sel = Selector(Kind.MEMBER if dst.endswith("member") else Kind.TAGGED, dst)
    else:
        sel = Selector(Kind.USER, dst, dst)
    mask = comp.masks(sel)[4]
    return [comp.endpoint_of(comp.names[i]) for i in range(len(comp.names)) if mask >> i & 1]


def _run_ssh_test(b: Build, test: SshTest) -> list[str]:
    """Every login of accept (deny) must be allowed (refused) from every device of src to
    every node of dst, by the ssh rules alone (as Tailscale's sshTests; the network rule for
    port 22 is the `tests` section's business)."""
    ev = b.evaluator
    failed = []
    for src in _endpoints(b, test.src):
        for dst_text in test.dst:
            for dst in _ssh_test_destinations(b, dst_text, src):
                if dst.node is not None and dst.node == src.node:
                    continue
                logins, nonroot = ev.ssh_logins(src, dst)
                who = src.node or src.user or ",".join(sorted(src.tags))
                for expect, users in ((True, test.accept), (False, test.deny)):
                    for user in users:
                        allowed = user in logins or (nonroot and user != "root")
                        if allowed != expect:
                            failed.append(f"{who} {'cannot' if expect else 'can'} log in to "
                                          f"{dst.node} as {user}, expected "
                                          f"{'accept' if expect else 'deny'}")
    return failed


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


def parse_query_endpoint(b: Build, text: str) -> Endpoint:
    """A node name, host alias or IP address from an eval query."""
    comp = b.compiler
    if text in comp.index or text in b.policy.hosts:
        return comp.endpoint_of(text)
    if grammar.ip_address(text) is None:
        raise ValueError(f'"{text}" is not a node, host alias or IP address')
    return comp.endpoint_of(text)


def known_users(b: Build) -> set[str]:
    """Every user the inputs name: node owners, group members, users in rules and tagOwners."""
    users = {n.owner for n in b.mesh.nodes.values() if n.owner}
    users.update(u for members in b.policy.groups.values() for u in members)
    selectors = [sel for r in (*b.policy.rules, *b.policy.ssh) for sel in (*r.src, *r.dst)]
    selectors += [sel for owners in b.policy.tag_owners.values() for sel in owners]
    users.update(sel.name for sel in selectors if sel.kind is Kind.USER)
    return users


def unknown_user_hint(users: set[str], text: str) -> str | None:
    """For a user none of ``users`` (``known_users``) is, a typo most likely: what it stands
    for, and the closest user that exists."""
    if not grammar.matches(grammar.USER, text) or text in users:
        return None
    return (f'no node, group or rule names the user "{text}" (it stands for a user with no '
            f"device); {did_you_mean(text, users)}")


def query_endpoints(b: Build, text: str) -> list[Endpoint]:
    """What an eval query names: one node, host alias or address, or every device of a
    user, group or tag (an identity with no device stands for itself)."""
    if text in b.compiler.index or text in b.policy.hosts or grammar.ip_address(text):
        return [parse_query_endpoint(b, text)]
    if text.startswith("tag:"):
        if text not in b.policy.tag_owners and not any(text in n.tags
                                                       for n in b.mesh.nodes.values()):
            raise ValueError(f'tag "{text}" is not in the policy\'s tagOwners')
        sel = Selector(Kind.TAG, text, text)
    elif text.startswith("group:"):
        if text not in b.policy.groups:
            raise ValueError(f'group "{text}" is not in the policy\'s groups')
        sel = Selector(Kind.GROUP, text, text)
    elif grammar.matches(grammar.USER, text):
        sel = Selector(Kind.USER, text, text)
    else:
        raise ValueError(f'"{text}" is not a node, user, group, tag, host alias or IP address')
    found = _endpoints(b, sel)
    if not found:
        raise ValueError(f'"{text}" names no device and no user')
    return found


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
