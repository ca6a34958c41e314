"""Filters for the role and playbooks/status.yml (controller side; thin adapters)."""

from __future__ import annotations

import os
import time

try:
    from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_wireguard import parse_dump
    from wgmesh.build import build
    from wgmesh.policy import PROTOCOLS
except ImportError as exc:  # pragma: no cover - depends on the controller's environment
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None

_BUILDS: dict = {}


def _build(mesh_file: str, policy_file: str = ""):
    files = [mesh_file, *([policy_file] if policy_file else [])]
    key = tuple((f, os.stat(f).st_mtime_ns) for f in files)
    if key not in _BUILDS:
        _BUILDS[key] = build(mesh_file, policy_file or None, run_tests=False)
    return _BUILDS[key]


def _age(epoch: int, now: float) -> str:
    if not epoch:
        return "never"
    secs = int(now - epoch)
    return f"{secs}s ago" if secs < 120 else f"{secs // 60}m ago"


def peer_status(dump: str, host_plan: dict, agent: dict | None = None) -> list[str]:
    """One line per compiled peer: its path (``direct``, ``lan``, ``relay via X``, or
    ``direct (punched)`` when the host's agent moved a relayed pair to a direct path, with
    the time of its last upgrade or fallback), endpoint in use, handshake, bytes."""
    punched = (agent or {}).get("peers") or {}
    now = time.time()
    _, running = parse_dump(dump)
    lines = []
    for p in host_plan["peers"]:
        r = running.get(p["public_key"])
        if r is None:
            lines.append(f"{p['name']:<10} {p['connection']:<7} NOT CONFIGURED")
            continue
        path = p["connection"]
        if path == "relay":
            path = f"relay via {p['relay']}" if p.get("relay") else "relay"
            a = punched.get(p["name"])
            if a:
                path = a["path"] if a.get("path") in ("direct (punched)", "trying direct") \
                    else path
                if a.get("last_event"):
                    path += f" ({a['last_event']} at {a['last_event_at']})"
        lines.append(f"{p['name']} {path}, endpoint {r['endpoint'] or '(none)'}, handshake "
                     f"{_age(r['handshake'], now)}, rx/tx {r['rx']}/{r['tx']} B")
    return lines or ["no peers (the policy gives this host none)"]


def probe_report(results: list, src: str, mesh_file: str, policy_file: str = "") -> list[str]:
    """Ping results (loop items: node names, or dicts with a name) against the policy's
    verdict for ICMP echo."""
    if IMPORT_ERROR is not None:
        raise RuntimeError(f"wgmesh filters need the wgmesh package ({IMPORT_ERROR})")
    b = _build(mesh_file, policy_file)
    res = b.resolution
    lines = []
    for r in results:
        dst = r["item"]["name"] if isinstance(r["item"], dict) else r["item"]
        allow = b.evaluator.check(res.endpoint_of(src), res.endpoint_of(dst),
                                  PROTOCOLS["icmp"], None).allow
        answered = r.get("rc") == 0
        mark = "" if answered == allow else "  <-- MISMATCH"
        lines.append(f"ping {dst}: {'answered' if answered else 'no answer'}, policy "
                     f"{'allows' if allow else 'denies'}{mark}")
    return lines


class FilterModule:
    def filters(self):
        return {"wgmesh_peer_status": peer_status, "wgmesh_probe_report": probe_report}
