"""A corpus of invalid inputs (tests/data/invalid/cases.yml), each with the exact errors
wgmesh must print: file, line and column, path, message and fix."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def run_check(tmp: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([WGMESH, "check", "-i", str(tmp), "--today", "2026-01-01"],
                         capture_output=True, text=True, cwd=tmp)
    out.stderr = out.stderr.replace(f"{tmp}/", "")
    return out


def test_the_base_is_valid(tmp_path):
    out = run_check(materialise({}, tmp_path))
    assert out.returncode == 0, out.stderr


def test_corpus_is_large_enough():
    assert len(CASES) >= 40
    assert len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_invalid_input(case, tmp_path):
    out = run_check(materialise(case, tmp_path))
    assert out.returncode == case.get("exit", 2), out.stderr
    assert out.stdout == ""
    assert out.stderr.splitlines() == case["errors"]
    # Nothing is written when the input is wrong.
    if "lock" in case:
        assert (tmp_path / "mesh.lock.yml").read_text() == case["lock"]
    else:
        assert not (tmp_path / "mesh.lock.yml").exists()
