"""Controller-side: pin the hosts' public keys and compile the whole mesh once per run."""

from __future__ import annotations

import base64
import datetime as dt

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

try:
    from wgmesh import programs, signing
    from wgmesh.build import KeyMismatch, build, source_commit
    from wgmesh.errors import InputError
    from wgmesh.policytests import PolicyTestFailure
except ImportError as exc:  # pragma: no cover - depends on the controller's environment
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None


def _plain(text: str) -> str:
    """An exact str for the core: Ansible 2.18's unsafe strings are str subclasses (whose
    str() is themselves) that the lockfile's YAML writer refuses."""
    return "".join([text])


class ActionModule(ActionBase):
    """See plugins/modules/wgmesh_compile.py for the documentation."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("mesh", "policy", "hosts", "rotate", "warn_days", "warn", "pull"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        if IMPORT_ERROR is not None:
            raise AnsibleActionFail(f"wgmesh_compile needs the wgmesh package ({IMPORT_ERROR})")
        args = self._task.args
        mesh_path = args.get("mesh")
        if not mesh_path:
            raise AnsibleActionFail("mesh is required (the path of mesh.yml)")
        hosts = list(args.get("hosts") or [])
        rotate = {_plain(n) for n in args.get("rotate") or []}
        # The keys this batch's hosts reported (wgmesh_key); every other host's comes from
        # the lockfile, so serial batches and --limit compile the same mesh.
        hostvars = (task_vars or {}).get("hostvars", {})
        keys = {}
        for name in hosts:
            reported = hostvars.get(name, {}).get("__wgmesh_key") or {}
            key = reported.get("public_key") if isinstance(reported, dict) else None
            keys[_plain(name)] = None if key is None else _plain(key)
        try:
            # One compile, with the reported keys pinned first (as of today, or of the
            # manifest's date in a signed mesh).
            b = build(mesh_path, args.get("policy") or None, keys=keys, rotate=rotate)
        except (InputError, PolicyTestFailure) as exc:
            what = ("the policy's tests fail" if isinstance(exc, PolicyTestFailure)
                    else "the mesh does not compile")
            raise AnsibleActionFail(f"{what} (no host was changed):\n" + "\n".join(
                str(p) for p in exc.problems)) from exc
        except KeyMismatch as exc:
            raise AnsibleActionFail("refusing to continue:\n" + str(exc)) from exc
        today = b.today
        refusal = self._refusal(b, keys, rotate, bool(args.get("pull")))
        if refusal:
            raise AnsibleActionFail(refusal + " (no host was changed)")
        before = b.lock.text_before
        res = b.resolution
        changed = b.lock.changed
        if changed and not self._task.check_mode:
            b.lock.save()

        net = b.mesh.network
        commit = source_commit(b)
        out = {}
        staying = []
        for name in sorted(hosts):
            node = b.mesh.nodes.get(name)
            if node is None or not node.managed or name in res.expired:
                out[name] = {"leaving": "expired" if name in res.expired else
                             "not in mesh.yml" if node is None else "not managed"}
            else:
                staying.append(name)
        try:
            for name, h in b.hosts(staying):
                out[name] = {
                    "bundle": b.bundle(name, commit, host=h),
                    "relay": bool(b.mesh.nodes[name].relay),
                    "addresses": [str(h.ipv4), str(h.ipv6)],
                    "peers": [{"name": p.name, "connection": p.connection, "relay": p.relay,
                               "endpoint": p.endpoint, "public_key": p.public_key,
                               "address": p.allowed_ips[0].split("/")[0]}
                              for p in h.peers],
                }
            out = dict(sorted(out.items()))
        except InputError as exc:
            raise AnsibleActionFail("the mesh does not compile:\n" + "\n".join(
                str(p) for p in exc.problems)) from exc
        warn_days = args.get("warn_days")
        # The mesh's warnings once per run: playbooks/check.yml gives them, unless --limit
        # left it out.
        warnings = list(b.warnings) if args.get("warn", True) else []
        soon = []
        if warn_days is not None:
            horizon = today + dt.timedelta(days=int(warn_days))
            soon = sorted(n for n, node in b.mesh.nodes.items()
                          if node.expires and today <= node.expires <= horizon)
            warnings += [f"{n} expires on {b.mesh.nodes[n].expires} and then leaves the mesh"
                         for n in soon]
            warnings += [f"{n} has expired ({b.mesh.nodes[n].expires}): the run takes it out "
                         "of the mesh" for n in res.expired]
        result.update(
            applied_earlier=self._applied_earlier(task_vars or {}, hosts),
            changed=changed,
            interface=net.interface,
            lockfile=str(b.lock.path),
            commit=commit,
            hosts=out,
            expired=list(res.expired),
            expiring=soon,
            retired=sorted(b.lock.retired),
            pinned=sorted(n for n, a in b.alloc.items() if a.public_key),
            rotated=sorted(rotate & set(keys)),
        )
        if any("agent" in h.get("bundle", {}) for h in out.values()):
            # The NAT traversal agent hosts install (wgmesh_apply's agent_program).
            result["agent_program"] = base64.b64encode(programs.agent_program()).decode()
        if any("bundle" in h for h in out.values()):
            # The monitor every host runs (wgmesh_apply's monitor_program).
            result["monitor_program"] = base64.b64encode(programs.monitor_program()).decode()
        if b.mesh.signing is not None:
            result.update(manifest=b.manifest, trust=signing.trust_of(b),
                          serial=b.manifest["manifest"]["serial"])
        warnings += self._left_out(task_vars or {}, b, keys)
        if warnings:
            result["warnings"] = warnings
        if self._task.diff and changed:
            result["diff"] = {"before_header": str(b.lock.path), "after_header": str(b.lock.path),
                              "before": before, "after": b.lock.dump()}
        return result

    @staticmethod
    def _refusal(b, keys: dict, rotate: set, pull: bool) -> str | None:
        """Why a signed mesh, or a pull run, may not go on with these inputs."""
        new = sorted(n for n in keys if b.lock.pinned_now(n))
        if new and (pull or b.mesh.signing is not None):
            return (f"{', '.join(new)} reported a key the lockfile does not pin: enrol it "
                    "first (`wgmesh enrol NODE PUBLIC_KEY`, commit the lockfile" +
                    (", sign a new manifest)" if b.mesh.signing else ")"))
        if pull and b.lock.changed:
            return (f"{b.lock.path} is not up to date with mesh.yml: a host in pull mode "
                    "never writes it (`wgmesh lock` and commit)")
        if b.mesh.signing is None:
            return None
        if rotate:
            return ("a signed mesh changes a key only by a signed lockfile: enrol the new "
                    "key and sign a new manifest (playbooks/rotate.yml is for unsigned meshes)")
        path = b.mesh.signing.manifest_path
        if b.manifest is None:
            return (f"mesh.yml has a signing section but there is no {path}: `wgmesh "
                    "manifest create`, then the admins `wgmesh manifest sign`")
        if b.lock.changed:
            return (f"{b.lock.path} is not up to date with mesh.yml (new nodes need "
                    "addresses): `wgmesh lock`, commit, and sign a new manifest")
        stale = signing.check_inputs(b, b.manifest)
        if stale:
            return (f"{path} does not state these inputs: " + "; ".join(stale) +
                    ". Make a new manifest and have it signed")
        return None

    @staticmethod
    def _left_out(task_vars: dict, b, keys: dict) -> list[str]:
        """With --limit: the mesh's hosts this run leaves out, and those of them that hold a
        stale bundle for sure (a peer's key was pinned by this run)."""
        if "ansible_limit" not in task_vars:
            return []
        out = sorted(set(task_vars.get("groups", {}).get("wgmesh", []))
                     - set(task_vars.get("ansible_play_hosts_all", [])))
        if not out:
            return []
        pinned = {n for n in keys if b.lock.pinned_now(n)}
        stale = sorted(n for n in out if n in b.resolution.index and any(
            p.name in pinned for p in b.compiler.host(n).peers)) if pinned else []
        text = (f"--limit leaves {len(out)} host(s) of the mesh out of this run: "
                f"{', '.join(out)}. ")
        if stale:
            text += (f"These now hold a stale bundle (a peer's key was pinned by this run): "
                     f"{', '.join(stale)}; run without --limit to update them.")
        else:
            text += ("Policy or mesh changes reach them only with a run that includes them; "
                     "playbooks/status.yml shows which hold a stale bundle.")
        return [text]

    @staticmethod
    def _applied_earlier(task_vars: dict, batch: list[str]) -> list[str]:
        """Hosts of this play that an earlier serial batch has applied (the canary probes
        only pairs whose both ends run this run's bundles)."""
        hostvars = task_vars.get("hostvars", {})
        out = []
        for name in task_vars.get("ansible_play_hosts_all", []):
            if name in batch:
                continue
            hv = hostvars.get(name, {})
            for key in ("__wgmesh_apply", "__wgmesh_apply_relay"):
                r = hv.get(key)
                if isinstance(r, dict) and r.get("hash") and not r.get("skipped"):
                    out.append(name)
                    break
        return out
