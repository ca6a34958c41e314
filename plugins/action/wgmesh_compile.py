"""Controller-side: pin the hosts' public keys and compile the whole mesh once per run."""

from __future__ import annotations

import datetime as dt

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

try:
    from wgmesh import render
    from wgmesh.build import KeyMismatch, PolicyTestFailure, build, pin_keys
    from wgmesh.compiler import fewer_gc_passes
    from wgmesh.errors import InputError
except ImportError as exc:  # pragma: no cover - depends on the controller's environment
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None


class ActionModule(ActionBase):
    """See plugins/modules/wgmesh_compile.py for the documentation."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("mesh", "policy", "public_keys"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        if IMPORT_ERROR is not None:
            raise AnsibleActionFail(f"wgmesh_compile needs the wgmesh package ({IMPORT_ERROR})")
        args = self._task.args
        mesh_path = args.get("mesh")
        if not mesh_path:
            raise AnsibleActionFail("mesh is required (the path of mesh.yml)")
        keys = args.get("public_keys") or {}
        today = dt.datetime.now(dt.UTC).date()
        try:
            b = build(mesh_path, args.get("policy") or None, today=today)
        except (InputError, PolicyTestFailure) as exc:
            raise AnsibleActionFail("the mesh does not compile:\n" + "\n".join(
                str(p) for p in exc.problems)) from exc

        before = b.lock.text_before
        try:
            b = pin_keys(b, keys, today)
        except InputError as exc:
            raise AnsibleActionFail("refusing to continue:\n" + "\n".join(
                str(p) for p in exc.problems)) from exc
        except KeyMismatch as exc:
            raise AnsibleActionFail("refusing to continue:\n" + str(exc)) from exc
        comp = b.compiler
        changed = b.lock.changed
        if changed and not self._task.check_mode:
            b.lock.save()

        net = b.mesh.network
        try:
            with fewer_gc_passes():
                hosts = {name: _host_result(comp.host(name), net) for name in sorted(keys)
                         if name in comp.index and b.mesh.nodes[name].managed}
        except InputError as exc:
            raise AnsibleActionFail("the mesh does not compile:\n" + "\n".join(
                str(p) for p in exc.problems)) from exc
        result.update(
            changed=changed,
            interface=net.interface,
            lockfile=str(b.lock.path),
            hosts=hosts,
            warnings=list(comp.warnings),
            expired=list(comp.expired),
        )
        if self._task.diff and changed:
            result["diff"] = {"before_header": str(b.lock.path), "after_header": str(b.lock.path),
                              "before": before, "after": b.lock.dump()}
        return result


def _host_result(h, net) -> dict:
    """What the role needs of one host's outputs (rendered text, no secret)."""
    return {
        "wg_conf": render.wg_quick(h, net),
        "nftables": render.nftables(h, net),
        "hosts_block": render.hosts_block(h),
        "hop_interface": net.hop_interface,
        "hop_conf": render.hop_conf(h, net),
        "forwarding": h.forwarding,
        "uses_exit_node": h.uses_exit_node,
        "management_networks": ([str(n) for n in net.management_networks]
                                if h.uses_exit_node else []),
        "peers": [{"name": p.name, "connection": p.connection, "endpoint": p.endpoint}
                  for p in h.peers],
        "address": str(h.ipv4),
        "address6": str(h.ipv6),
    }
