"""The pipelines `wgmesh init` writes (docs/gitops.md): their install, check and plan
commands, run as the CI would run them (bash -e, the CI's variables and checkouts) on a site
repository with an origin of its own. The code that judges a pull request is the target
branch's: a pull request that pins a wgmesh of its own to pass itself still gets the verdict
the target branch's wgmesh gives."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from wgmesh import scaffold

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests/data/golden-mesh"
BIN = str(Path(sys.executable).parent)
SCAFFOLD = REPO / "src/wgmesh/scaffold"


def github_workflow() -> dict:
    return yaml.safe_load((SCAFFOLD / "github-workflow.yml").read_text())


def github_steps(names: tuple[str, ...]) -> list[dict]:
    doc = github_workflow()
    steps = {s.get("name"): s for s in doc["jobs"]["plan"]["steps"]}
    assert "gh pr comment" in steps["Post the plan"]["run"]
    assert doc["env"]["WGMESH_INVENTORY"] == "inventories/prod"
    return [steps[n] for n in names]


def gitlab_script() -> list[str]:
    doc = yaml.safe_load((SCAFFOLD / "gitlab-ci.yml").read_text())
    assert doc["variables"]["WGMESH_INVENTORY"] == "inventories/prod"
    return doc["plan"]["script"]


def git(work: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@e.com",
                    *args], check=True, capture_output=True)


def build_wheel(project: Path, out: Path) -> Path:
    subprocess.run([f"{BIN}/pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(out), str(project)], check=True,
                   capture_output=True)
    [wheel] = out.glob("wgmesh-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """This wgmesh as a wheel: the package index the pipelines' pip reads here."""
    out = tmp_path_factory.mktemp("wheelhouse")
    build_wheel(REPO, out)
    return out


@pytest.fixture
def repo(tmp_path):
    """A clone of a site repository (`wgmesh init`, with the golden mesh as its inventory)
    whose origin has main; the work tree is the branch of a pull request."""
    origin, work = tmp_path / "origin.git", tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    scaffold.write(work)
    shutil.copytree(GOLDEN, work / "inventories/prod", dirs_exist_ok=True)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", ".")
    git(work, "commit", "-qm", "mesh")
    git(work, "remote", "add", "origin", str(origin))
    git(work, "push", "-q", "origin", "main")
    git(work, "checkout", "-qb", "change")
    git(work, "fetch", "-q", "origin")
    return work


def run(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
            "WGMESH_INVENTORY": "inventories/prod", **env}
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=300)


def offline_pip(wheelhouse: Path) -> dict[str, str]:
    """pip as the CI runs it, but from this machine alone: only wgmesh itself is installed
    (from the wheelhouse, as the requirements.txt the pipeline names pins it); what it runs
    with comes from this test's environment (where the wgmesh under test shows as installed,
    hence PIP_IGNORE_INSTALLED)."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse), "PIP_NO_DEPS": "1",
            "PIP_IGNORE_INSTALLED": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PYTHONPATH": sysconfig.get_paths()["purelib"]}


def widen(work: Path) -> None:
    policy = work / "inventories/prod/policy.hujson"
    policy.write_text(policy.read_text().replace(
        '"acls": [', '"acls": [\n    {"action": "accept", "src": ["carol@example.com"], '
        '"proto": "tcp", "dst": ["tag:web:8443"]},', 1))
    git(work, "commit", "-qam", "carol gets the web tier's 8443")


def judge_itself(work: Path, tmp_path: Path) -> None:
    """The pull request pins a wgmesh of its own, whose plan says that nothing ever widens
    access, shipped in the pull request itself."""
    project = tmp_path / "evil-project"
    for part in ("src", "roles", "plugins", "playbooks", "meta"):
        shutil.copytree(REPO / part, project / part, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, project / part)
    plan = project / "src/wgmesh/plan.py"
    text = plan.read_text()
    assert "WIDENED = 4" in text
    plan.write_text(text.replace("WIDENED = 4", "WIDENED = 0"))
    wheel = build_wheel(project, tmp_path / "evil-wheel")
    shutil.copy(wheel, work / wheel.name)
    (work / "requirements.txt").write_text(f"wgmesh @ file://{work / wheel.name}\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "a wgmesh whose plan never widens")


def lock_and_push(repo: Path) -> None:
    """Pin the addresses, commit the lockfile and make it the target branch's state."""
    subprocess.run([f"{BIN}/wgmesh", "lock", "-i", "inventories/prod"], cwd=repo, check=True,
                   capture_output=True)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "lock")
    git(repo, "push", "-q", "origin", "HEAD:main")
    git(repo, "fetch", "-q", "origin")


def test_github_plan_runs_on_every_pull_request_with_the_target_branchs_code():
    doc = github_workflow()
    assert set(doc["on"]) == {"pull_request_target", "push"}
    assert doc["on"]["pull_request_target"] is None  # no paths filter: src/ changes too
    steps = doc["jobs"]["plan"]["steps"]
    trusted, proposed = steps[0]["with"], steps[1]["with"]
    assert "ref" not in trusted and trusted["path"] == "trusted"
    assert proposed["ref"] == "${{ github.event.pull_request.head.sha }}"
    assert proposed["path"] == "proposed" and proposed["persist-credentials"] is False


def test_github_check_and_plan_steps(repo, tmp_path, wheelhouse):
    install, check, plan = github_steps(("Install wgmesh", "Check", "Plan"))
    assert check["working-directory"] == plan["working-directory"] == "proposed"
    runner = tmp_path / "runner"
    runner.mkdir()
    # The job's two checkouts: the target branch, and the pull request beside it.
    git(repo, "worktree", "add", "-q", "--detach", str(runner / "trusted"), "origin/main")
    lock_and_push(repo)
    widen(repo)
    judge_itself(repo, tmp_path)
    os.symlink(repo, runner / "proposed")
    env = {"RUNNER_TEMP": str(tmp_path), "GITHUB_PATH": str(tmp_path / "github_path"),
           "GITHUB_OUTPUT": str(tmp_path / "github_output"), "GITHUB_BASE_REF": "main"}
    pip = offline_pip(wheelhouse)
    out = run(install["run"], runner, **env, **pip)
    assert out.returncode == 0, out.stdout + out.stderr
    path = (tmp_path / "github_path").read_text().strip()
    env["PATH"] = f"{path}:{os.environ['PATH']}"  # what GITHUB_PATH does for later steps
    env["PYTHONPATH"] = pip["PYTHONPATH"]  # wgmesh's own dependencies
    # A lockfile out of date fails the pull request (origin/main's worktree predates it).
    (repo / "inventories/prod/mesh.lock.yml").rename(tmp_path / "lock")
    out = run(check["run"], runner / "proposed", **env)
    assert out.returncode == 1 and "mesh.lock.yml" in out.stderr
    (tmp_path / "lock").rename(repo / "inventories/prod/mesh.lock.yml")
    for step in (check, plan):
        out = run(step["run"], runner / "proposed", **env)
        assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "github_output").read_text() == "exit_code=4\n"
    md = (tmp_path / "plan.md").read_text()
    assert "**Access widens**" in md
    assert "| `carol@example.com (group:ops)` | gains | `web1` | `tcp 8443` |" in md


def test_gitlab_plan_job(repo, tmp_path, wheelhouse):
    lock_and_push(repo)
    env = {"CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main", "WGMESH_NOTE_TOKEN": "",
           "CI_BUILDS_DIR": str(tmp_path / "builds"), **offline_pip(wheelhouse)}
    script = "\n".join(gitlab_script())
    doc = yaml.safe_load((SCAFFOLD / "gitlab-ci.yml").read_text())
    assert doc["plan"]["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    out = run(script, repo, **env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "plan exit code 0" in out.stdout
    widen(repo)
    judge_itself(repo, tmp_path)
    shutil.rmtree(tmp_path / "builds")
    git(repo, "worktree", "prune")
    out = run(script, repo, **env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "plan exit code 4" in out.stdout and "second approval" in out.stdout
    md = (repo / "plan.md").read_text()
    assert "| `carol@example.com (group:ops)` | gains | `web1` | `tcp 8443` |" in md
    # A policy that does not parse fails the job at its check.
    policy = repo / "inventories/prod/policy.hujson"
    policy.write_text(policy.read_text().replace('"acls": [', '"acls": [ oops', 1))
    shutil.rmtree(tmp_path / "builds")
    git(repo, "worktree", "prune")
    out = run(script, repo, **env)
    assert out.returncode == 2 and "policy.hujson" in out.stderr
