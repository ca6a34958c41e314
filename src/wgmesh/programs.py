"""The programs wgmesh_apply installs on hosts, from the code the controller runs (so a
signed or pinned controller is what hosts run): the NAT traversal agent and the monitor,
each a zip application of the collection's module_utils (the host-side code, in one copy)
that starts one module's ``main``."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import ansible_collections.wgmesh.mesh.plugins.module_utils as module_utils

UTILS = "ansible_collections/wgmesh/mesh/plugins/module_utils"
PACKAGE = UTILS.replace("/", ".")


def _zipapp(module: str) -> bytes:
    """``python3 PROGRAM.pyz``: the module_utils and a __main__ that runs ``module``'s main,
    stored uncompressed with fixed times, so the same code gives the same bytes (and a second
    run changes nothing)."""
    files = {"__main__.py": f"from {PACKAGE}.{module} import main\nraise SystemExit(main())\n"}
    parts = UTILS.split("/")
    for depth in range(1, len(parts) + 1):
        files["/".join(parts[:depth]) + "/__init__.py"] = ""
    for path in sorted(Path(next(iter(module_utils.__path__))).glob("wgmesh_*.py")):
        files[f"{UTILS}/{path.name}"] = path.read_text(encoding="utf-8")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, files[name])
    return out.getvalue()


def agent_program() -> bytes:
    return _zipapp("wgmesh_agent")


def monitor_program() -> bytes:
    return _zipapp("wgmesh_monitor")
