"""Controller-side part of wgmesh_apply: runs the module, except with ``root``, where the
bundle's files are written under a folder through the connection and no Python runs on the
host (an image or a chroot). See plugins/modules/wgmesh_apply.py for the documentation."""

from __future__ import annotations

import base64
import binascii
import json
import os
import shlex
import tempfile

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

# The module's own rules (bundle check, file list, names block), so the two ways of writing
# a bundle cannot disagree about what it holds.
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_bundle import (
    SSHD_DROPIN,
    BundleError,
    bundle_files,
    check_bundle,
    with_hosts_block,
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        if not args.get("root") or args.get("state", "present") != "present":
            result.update(self._execute_module(module_name="wgmesh_apply", module_args=args,
                                               task_vars=task_vars))
            self._remove_tmp_path(self._connection._shell.tmpdir)
            return result
        b = args.get("bundle")
        if not isinstance(b, dict):
            raise AnsibleActionFail("bundle is required")
        try:
            check_bundle(b)
        except BundleError as exc:
            raise AnsibleActionFail(str(exc)) from exc
        root = args["root"]

        def under(path: str) -> str:
            return os.path.join(root, path.lstrip("/"))

        hosts = under(args.get("hosts_file") or "/etc/hosts")
        state = under(os.path.join(args.get("state_dir") or "/var/lib/wgmesh", "bundle.json"))
        dropin = args.get("sshd_dropin") or SSHD_DROPIN
        files = [(under(p), text, mode) for p, text, mode in bundle_files(b, dropin)]
        have = self._read([p for p, _, _ in files] + [hosts])
        files.append((hosts, with_hosts_block(have[hosts] or "", b["interface"],
                                              b["hosts_block"] or None), 0o644))
        changes = [(p, text, mode) for p, text, mode in files if have[p] != text]
        actions = [f"{'write' if text is not None else 'remove'} {p}" for p, text, _ in changes]
        if changes and not self._task.check_mode:
            self._write([*changes, (state, json.dumps(b), 0o600)])
        result.update(changed=bool(changes), actions=actions, drift=[], hash=b["hash"],
                      previous=None, peers=b["wg_conf"].count("\n[Peer]"))
        if self._task.diff and changes:
            result["diff"] = [{"before_header": p, "after_header": p, "before": have[p] or "",
                               "after": text or ""} for p, text, _ in changes]
        return result

    def _shell(self, script: str, what: str) -> str:
        out = self._low_level_execute_command(script, sudoable=True)
        if out["rc"] != 0:
            raise AnsibleActionFail(f"{what} failed ({out['rc']}): {out['stderr'].strip()}")
        return out["stdout"]

    def _read(self, paths: list[str]) -> dict[str, str | None]:
        """Every file in one command (base64, so any content survives the trip)."""
        script = "; ".join(f"if [ -f {shlex.quote(p)} ]; then printf 'F '; base64 -w0 "
                           f"{shlex.quote(p)}; echo; else echo M; fi" for p in paths)
        lines = self._shell(script, "reading the files under root").splitlines()
        if len(lines) != len(paths):
            raise AnsibleActionFail("reading the files under root gave unexpected output")
        out = {}
        for path, line in zip(paths, lines, strict=True):
            try:
                out[path] = (base64.b64decode(line[2:]).decode()
                             if line.startswith("F ") else None)
            except (binascii.Error, UnicodeDecodeError):
                out[path] = ""  # not text: rewrite it
        return out

    def _write(self, changes: list[tuple[str, str | None, int]]) -> None:
        """New content beside each file through the connection, then one command moves
        them in place (each file is replaced whole)."""
        dirs = sorted({os.path.dirname(p) for p, text, _ in changes if text is not None})
        self._shell("mkdir -p " + " ".join(map(shlex.quote, dirs)), "making the folders")
        steps = []
        for path, text, mode in changes:
            if text is None:
                steps.append(f"rm -f {shlex.quote(path)}")
                continue
            fd, local = tempfile.mkstemp(prefix="wgmesh-root.")
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(text)
                self._connection.put_file(local, f"{path}.wgmesh-new")
            finally:
                os.unlink(local)
            new = shlex.quote(f"{path}.wgmesh-new")
            steps.append(f"chmod {mode:o} {new} && mv -f {new} {shlex.quote(path)}")
        self._shell(" && ".join(steps), "moving the files in place")
