"""The policy's own tests (``tests`` and ``sshTests``), judged against a compiled mesh as
Tailscale judges them: ``tests`` by the network rules alone, ``sshTests`` by the ssh rules.
A pass is remembered per input state, so the many commands run on one commit pay once."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import os
from pathlib import Path

from wgmesh import grammar
from wgmesh.compile.evaluate import Endpoint
from wgmesh.errors import InputError, Problem, did_you_mean
from wgmesh.lock import Lock
from wgmesh.mesh import Mesh
from wgmesh.policy import PROTOCOLS, Policy, PolicyTest, SshTest, split_hostport
from wgmesh.queries import Compiled, endpoints
from wgmesh.selectors import Kind, Selector


def check(b: Compiled) -> None:
    """Raise PolicyTestFailure when the policy's tests do not hold (InputError when one names
    a destination that does not exist); a pass of the same inputs is not run again."""
    if not (b.policy.tests or b.policy.ssh_tests):
        return
    digest = _input_digest(b.mesh, b.policy, b.lock, b.today)
    if _passed_before(digest):
        return
    failures = policy_test_failures(b)
    if failures:
        raise PolicyTestFailure(failures)
    _remember_pass(digest)


class PolicyTestFailure(Exception):
    """The policy's own tests do not hold (exit code 1, not an input error)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


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
    package = Path(__file__).parent  # its subpackages too (cli, render, lab)
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
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


def _test_destination(b: Compiled, host: str) -> list[Endpoint]:
    """A test destination: a node name, a tag, a host alias or an address."""
    if host in b.resolution.index:
        return [b.resolution.endpoint_of(host)]
    if host.startswith("tag:"):
        return endpoints(b, Selector(Kind.TAG, host, host))
    return [b.resolution.endpoint_of(host)]


def _run_test(b: Compiled, test: PolicyTest) -> list[str]:
    ev = b.evaluator
    proto = PROTOCOLS.get((test.proto or "tcp").lower()) or int(test.proto)
    failed = []
    srcs = endpoints(b, test.src)
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
                            dst = b.resolution.endpoint_of(dst.node, family=src.addr.version)
                        elif src.node:
                            src = b.resolution.endpoint_of(src.node, family=dst.addr.version)
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


def _test_position(b: Compiled, origin: str) -> tuple[int, int]:
    return b.policy.where(tuple(int(x) if x.isdigit() else x
                                for x in origin.replace("[", ".").replace("]", "").split(".")))


def _unknown_destinations(b: Compiled) -> list[Problem]:
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


def policy_test_failures(b: Compiled) -> list[Problem]:
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


def _ssh_test_destinations(b: Compiled, dst: str, src: Endpoint) -> list[Endpoint]:
    res = b.resolution
    if dst in res.index:
        return [res.endpoint_of(dst)]
    if dst == "autogroup:self":
        mine = res.user_mask.get(src.user or "", 0) if not src.tags else 0
        return [res.endpoint_of(res.names[i]) for i in range(len(res.names)) if mine >> i & 1]
    if dst.startswith("tag:"):
        sel = Selector(Kind.TAG, dst, dst)
    elif dst in ("autogroup:member", "autogroup:tagged"):
        sel = Selector(Kind.MEMBER if dst.endswith("member") else Kind.TAGGED, dst)
    else:
        sel = Selector(Kind.USER, dst, dst)
    mask = res.masks(sel)[4]
    return [res.endpoint_of(res.names[i]) for i in range(len(res.names)) if mask >> i & 1]


def _run_ssh_test(b: Compiled, test: SshTest) -> list[str]:
    """Every login of accept (deny) must be allowed (refused) from every device of src to
    every node of dst, by the ssh rules alone (as Tailscale's sshTests; the network rule for
    port 22 is the `tests` section's business)."""
    ev = b.evaluator
    failed = []
    for src in endpoints(b, test.src):
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


