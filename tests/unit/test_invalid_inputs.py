"""A corpus of invalid inputs (tests/data/invalid/cases.yml), each with the exact errors
wgmesh must print: file, line and column, path, message and fix. The cases call the CLI in
process; the base case runs the installed command once, as users do."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wgmesh import cli

DATA = Path(__file__).resolve().parents[1] / "data" / "invalid"
CASES = yaml.safe_load((DATA / "cases.yml").read_text())
WGMESH = str(Path(sys.executable).parent / "wgmesh")


def edit(text: str, replacements) -> str:
    for old, new in replacements or []:
        old, new = old.replace("\\n", "\n"), new.replace("\\n", "\n")
        assert old in text, f"case edits text that is not in the base file: {old!r}"
        text = text.replace(old, new, 1)
    return text


def materialise(case, tmp: Path) -> Path:
    (tmp / "mesh.yml").write_text(edit((DATA / "base-mesh.yml").read_text(), case.get("mesh")))
    (tmp / "policy.hujson").write_text(
        edit((DATA / "base-policy.hujson").read_text(), case.get("policy")))
    if "lock" in case:  # a lockfile as the case gives it, whole
        (tmp / "mesh.lock.yml").write_text(case["lock"])
    return tmp


ARGS = ["check", "--today", "2026-01-01", "-i"]


def test_the_base_is_valid(tmp_path):
    tmp = materialise({}, tmp_path)
    out = subprocess.run([WGMESH, *ARGS, str(tmp)], capture_output=True, text=True, cwd=tmp)
    assert out.returncode == 0, out.stderr


def test_every_case_has_a_name_of_its_own():
    assert len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_invalid_input(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(materialise(case, tmp_path))
    code = cli.main([*ARGS, str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == case.get("exit", 2), err
    assert out == ""
    assert err.replace(f"{tmp_path}/", "").splitlines() == case["errors"]
    # Nothing is written when the input is wrong.
    if "lock" in case:
        assert (tmp_path / "mesh.lock.yml").read_text() == case["lock"]
    else:
        assert not (tmp_path / "mesh.lock.yml").exists()
