"""Every module's documentation renders with ansible-doc and lists exactly the options the
code takes (an option added to the code but not to DOCUMENTATION fails here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from meshkit import REPO, plugin

BIN = Path(sys.executable).parent
MODULES = ("wgmesh_apply", "wgmesh_compile", "wgmesh_key")


class Captured(Exception):
    pass


def options_in_code(name: str) -> set[str]:
    if name == "wgmesh_compile":  # run by its action plugin, which checks the arguments
        action = plugin("plugins/action/wgmesh_compile.py")
        return set(action.ActionModule._VALID_ARGS)
    code = plugin(f"plugins/modules/{name}.py")

    def capture(argument_spec, **_):
        raise Captured(argument_spec)

    code.AnsibleModule = capture
    with pytest.raises(Captured) as exc:
        code.main()
    return set(exc.value.args[0])


@pytest.mark.parametrize("name", MODULES)
def test_documented_options_are_the_code_options(name):
    code = plugin(f"plugins/modules/{name}.py")
    doc = yaml.safe_load(code.DOCUMENTATION)
    assert yaml.safe_load(code.EXAMPLES) and yaml.safe_load(code.RETURN)
    assert set(doc["options"]) == options_in_code(name)
    for option, spec in doc["options"].items():
        assert spec.get("description"), f"{name}: {option} has no description"


def test_ansible_doc_renders_every_module():
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    out = subprocess.run([str(BIN / "ansible-doc"), "-t", "module", "--json", *MODULES],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = json.loads(out.stdout)
    assert set(docs) == set(MODULES)
    for name, entry in docs.items():
        assert entry["doc"]["short_description"] and entry["return"], name
