"""The pipelines of docs/gitops.md: their check and plan commands, run as the CI would run
them (bash -e, the CI's variables) on a repository with an origin of its own."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests/data/golden-mesh"
BIN = str(Path(sys.executable).parent)


def github_steps(names: tuple[str, ...]) -> list[str]:
    doc = yaml.safe_load((REPO / "docs/gitops/github-actions.yml").read_text())
    steps = {s.get("name"): s for s in doc["jobs"]["plan"]["steps"]}
    assert "gh pr comment" in steps["Post the plan"]["run"]
    assert doc["env"]["WGMESH_INVENTORY"] == "inventories/prod"
    return [steps[n]["run"] for n in names]


def gitlab_script() -> list[str]:
    doc = yaml.safe_load((REPO / "docs/gitops/gitlab-ci.yml").read_text())
    assert doc["variables"]["WGMESH_INVENTORY"] == "inventories/prod"
    return doc["plan"]["script"]


@pytest.fixture
def repo(tmp_path):
    """A clone whose origin has main with the golden mesh; the work tree is a branch."""
    origin, work = tmp_path / "origin.git", tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    shutil.copytree(GOLDEN, work / "inventories/prod")
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "mesh"], check=True)
    subprocess.run([*git, "remote", "add", "origin", str(origin)], check=True)
    subprocess.run([*git, "push", "-q", "origin", "main"], check=True)
    subprocess.run([*git, "checkout", "-qb", "change"], check=True)
    subprocess.run([*git, "fetch", "-q", "origin"], check=True)
    return work


def run(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
            "WGMESH_INVENTORY": "inventories/prod", **env}
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=120)


def widen(work: Path) -> None:
    policy = work / "inventories/prod/policy.hujson"
    policy.write_text(policy.read_text().replace(
        '"acls": [', '"acls": [\n    {"action": "accept", "src": ["carol@example.com"], '
        '"proto": "tcp", "dst": ["tag:web:8443"]},', 1))
    subprocess.run(["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@e.com",
                    "commit", "-qam", "carol gets the web tier's 8443"], check=True)


def lock_and_push(repo: Path) -> None:
    """Pin the addresses, commit the lockfile and make it the target branch's state."""
    subprocess.run([f"{BIN}/wgmesh", "lock", "-i", "inventories/prod"], cwd=repo, check=True,
                   capture_output=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e.com"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "lock"], check=True)
    subprocess.run([*git, "push", "-q", "origin", "HEAD:main"], check=True)
    subprocess.run([*git, "fetch", "-q", "origin"], check=True)


def test_github_check_and_plan_steps(repo, tmp_path):
    check, plan = github_steps(("Check", "Plan"))
    # A lockfile out of date fails the pull request.
    out = run(check, repo)
    assert out.returncode == 1 and "mesh.lock.yml" in out.stderr
    lock_and_push(repo)
    widen(repo)
    output = tmp_path / "github_output"
    for script in (check, plan):
        out = run(script, repo, GITHUB_BASE_REF="main", GITHUB_OUTPUT=str(output))
        assert out.returncode == 0, out.stdout + out.stderr
    assert output.read_text() == "exit_code=4\n"
    md = (repo / "plan.md").read_text()
    assert "**Access widens**" in md
    assert "| `carol@example.com (group:ops)` | gains | `web1` | `tcp 8443` |" in md


def test_gitlab_plan_job(repo):
    lock_and_push(repo)
    env = {"CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main", "WGMESH_NOTE_TOKEN": ""}
    script = "\n".join(gitlab_script())
    out = run(script, repo, **env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "plan exit code 0" in out.stdout
    widen(repo)
    out = run(script, repo, **env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "plan exit code 4" in out.stdout and "second approval" in out.stdout
    md = (repo / "plan.md").read_text()
    assert "| `carol@example.com (group:ops)` | gains | `web1` | `tcp 8443` |" in md
    # A policy that does not parse fails the job at its first command.
    policy = repo / "inventories/prod/policy.hujson"
    policy.write_text(policy.read_text().replace('"acls": [', '"acls": [ oops', 1))
    out = run(script, repo, **env)
    assert out.returncode == 2 and "policy.hujson" in out.stderr
