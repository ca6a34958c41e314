"""Pull mode: a host applies its own part of the mesh from the repository.

The repository gives the host data and nothing else. `wgmesh host pull` fetches the commit
with git and checks out only the files wgmesh reads (mesh.yml, its lockfile, its signed
manifest and its policy: a sparse checkout, so no play, role, plugin, ansible.cfg or
group_vars of the commit is even on disk), then runs the pull play of the wgmesh project
installed on the host (the kit's install.sh put it beside this venv) against them, with the
local connection, limited to the host's node name. That play runs the same role as a push
run: the host compiles only its own bundle (checking it against the signed manifest in a
signed mesh) and applies it with the same module. So whoever can push to the repository
can propose data, which the admins' signatures decide on, and cannot run code on a host;
the host's code changes only by installing another kit. No controller holds a key to it.

``wgmesh host enrol --pull URL --node NAME --inventory PATH`` keeps the settings in
/etc/wgmesh/pull.json and, where systemd runs, starts a timer for ``wgmesh host pull``;
elsewhere ``wgmesh host pull --loop SECONDS`` runs under whatever supervises the host.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from wgmesh import grammar
from wgmesh.errors import InputError, Problem, write_atomic

CONFIG = Path("/etc/wgmesh/pull.json")
CHECKOUT = "/var/lib/wgmesh/pull"
UNIT_DIR = Path("/etc/systemd/system")
# git URLs without spaces or shell characters, of the schemes git fetches over, and with
# no part that begins with "-": a user or host that did would reach ssh as an option
# (-oProxyCommand=...).
URL = re.compile(r"(?:git|ssh|https?)://(?:[A-Za-z0-9_][A-Za-z0-9._~%+-]{0,63}@)?"
                 r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}(?::[0-9]{1,5})?"
                 r"(?:/[A-Za-z0-9._~:@/%+-]{0,400})?|"
                 r"file:///[A-Za-z0-9._~][A-Za-z0-9._~/%+-]{0,400}|"
                 r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}@[A-Za-z0-9][A-Za-z0-9.-]{0,252}:"
                 r"[A-Za-z0-9._~+][A-Za-z0-9._~/+-]{0,299}", re.ASCII)
BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}", re.ASCII)
RELATIVE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}", re.ASCII)


def settings(url: str, node: str, inventory: str, branch: str = "main",
             every: int = 300) -> dict:
    problems = []

    def bad(what: str, value: str, fix: str) -> None:
        problems.append(Problem(str(CONFIG), 0, 0, what, f"{value[:80]!r} is not valid", fix))

    if not URL.fullmatch(url):
        bad("url", url, "a git URL: git://host/repo.git, ssh://host/repo.git, "
            "https://host/repo.git, file:///path or user@host:repo (no part beginning with -)")
    if not grammar.matches(grammar.NODE_NAME, node):
        bad("node", node, "the host's node name in mesh.yml")
    if not RELATIVE.fullmatch(inventory) or ".." in inventory.split("/"):
        bad("inventory", inventory, "the inventory folder inside the repository, e.g. "
            "inventories/prod")
    if not BRANCH.fullmatch(branch) or ".." in branch:
        bad("branch", branch, "a branch, tag or commit, e.g. main")
    if not 10 <= every <= 86400:
        bad("every", str(every), "seconds between runs, 10 to 86400")
    if problems:
        raise InputError(problems)
    return {"url": url, "node": node, "inventory": inventory, "branch": branch,
            "every": every, "checkout": CHECKOUT}


def installed_project() -> Path:
    """The wgmesh project this command was installed with (the kit's install.sh unpacks it
    beside the venv: TARGET/.venv/bin/wgmesh): the only code pull mode runs."""
    project = Path(sys.executable).parent.parent.parent
    if not (project / "ansible.cfg").is_file() or not (project / "playbooks/pull.yml").is_file():
        raise InputError([Problem(str(project), 0, 0, "", "no wgmesh project beside this venv "
                                  "(ansible.cfg, playbooks/pull.yml)", "install wgmesh on "
                                  "the host from a kit: sh install.sh /opt/wgmesh")])
    return project


def _git(checkout: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    out = subprocess.run(["git", "-C", checkout, *args], capture_output=True, text=True,
                         env={**env, "GIT_TERMINAL_PROMPT": "0"})
    if check and out.returncode != 0:
        raise InputError([Problem(checkout, 0, 0, "", f"git {args[0]}: "
                                  + (out.stderr.strip() or out.stdout.strip())[-400:],
                                  "check the repository URL, branch and network")])
    return out


# Paths a sparse checkout takes whole: no pattern characters, no whitespace.
PLAIN_PATH = re.compile(r"[A-Za-z0-9._/+@=-]+", re.ASCII)


def _inside(repo_top: Path, path: Path) -> str:
    """``path`` relative to the checkout's top, refused when it is outside the repository,
    is not a plain path, or lies where Ansible would read variables (group_vars, host_vars:
    variables are templates, which run code)."""
    try:
        rel = path.resolve().relative_to(repo_top.resolve())
    except ValueError:
        raise InputError([Problem(str(path), 0, 0, "", "is outside the repository: pull mode "
                                  "reads only files of the commit", "keep the policy and "
                                  "the lockfile in the repository")]) from None
    if not PLAIN_PATH.fullmatch(str(rel)) or {"group_vars", "host_vars"} & set(rel.parts):
        raise InputError([Problem(str(path), 0, 0, "", "is not a plain path outside "
                                  "group_vars and host_vars: pull mode does not check it out",
                                  "keep the policy and the lockfile in a folder of their own")])
    return str(rel)


def fetch_inputs(conf: dict) -> Path:
    """Fetch the commit and check out only the files wgmesh reads; returns the inventory
    folder in the checkout. git runs no code of the repository (no hooks, filters or
    configuration travel with a fetch)."""
    checkout, inventory = conf["checkout"], conf["inventory"]
    if not os.path.isdir(os.path.join(checkout, ".git")):
        shutil.rmtree(checkout, ignore_errors=True)
        os.makedirs(checkout, mode=0o700)
        _git(checkout, "init", "-q")
    _git(checkout, "fetch", "-q", "--force", "--no-tags", "--end-of-options", conf["url"],
         f"+{conf['branch']}:refs/wgmesh/pulled")
    # Only mesh.yml first: it names the other inputs.
    _git(checkout, "sparse-checkout", "set", "--no-cone", f"/{inventory}/mesh.yml")
    _git(checkout, "checkout", "-q", "--force", "--detach", "refs/wgmesh/pulled")
    from wgmesh.mesh import load_mesh

    mesh_file = Path(checkout) / inventory / "mesh.yml"
    if not mesh_file.is_file():
        raise InputError([Problem(str(mesh_file), 0, 0, "", "the commit has no mesh.yml in "
                                  f"{inventory}", "check --inventory of `host enrol --pull`")])
    mesh = load_mesh(mesh_file)
    top = Path(checkout)
    wanted = [mesh.path, mesh.lock_path, *([mesh.policy_path] if mesh.policy_path else []),
              *([mesh.signing.manifest_path] if mesh.signing else [])]
    _git(checkout, "sparse-checkout", "set", "--no-cone",
         *sorted({f"/{_inside(top, p)}" for p in wanted}))
    return top / inventory


def pull_play_argv(conf: dict, project: Path, inventory: Path) -> list[str]:
    """The installed project's pull play, on this host, against the fetched inputs."""
    # mesh.yml alone as the inventory source: nothing else beside it is parsed.
    return [str(Path(sys.executable).parent / "ansible-playbook"), "-c", "local",
            "-i", str(inventory / "mesh.yml"), "-l", conf["node"],
            str(project / "playbooks/pull.yml")]


def run_once(conf: dict) -> int:
    try:
        project = installed_project()
        inventory = fetch_inputs(conf)
    except InputError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=str(project / "ansible.cfg"))
    return subprocess.run(pull_play_argv(conf, project, inventory), cwd=project,
                          env=env).returncode


def run(config: Path = CONFIG, loop: int | None = None) -> int:
    conf = json.loads(config.read_text())
    conf = settings(conf["url"], conf["node"], conf["inventory"], conf["branch"],
                    conf["every"])
    while True:
        rc = run_once(conf)
        if loop is None:
            return rc
        print(f"wgmesh host pull: the pull play exited {rc}; next run in {loop} s", flush=True)
        time.sleep(loop)


def service_unit() -> str:
    wgmesh = Path(sys.executable).parent / "wgmesh"
    return ("[Unit]\nDescription=wgmesh pull mode: apply this host's part of the mesh from "
            "the repository\nWants=network-online.target\nAfter=network-online.target\n\n"
            f"[Service]\nType=oneshot\nExecStart={wgmesh} host pull\n")


def timer_unit(every: int) -> str:
    return ("[Unit]\nDescription=wgmesh pull mode, every few minutes\n\n"
            f"[Timer]\nOnBootSec=60\nOnUnitActiveSec={every}\nRandomizedDelaySec="
            f"{max(1, every // 10)}\n\n[Install]\nWantedBy=timers.target\n")


def install(conf: dict, config: Path = CONFIG, unit_dir: Path = UNIT_DIR,
            systemd: bool | None = None) -> str:
    """Write the settings; where systemd runs, the timer (enabled and started)."""
    config.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(config, json.dumps(conf, indent=1, sort_keys=True) + "\n", 0o644)
    if systemd is None:
        systemd = os.path.isdir("/run/systemd/system")
    if not systemd:
        return (f"no systemd here: run `{Path(sys.executable).parent / 'wgmesh'} host pull "
                f"--loop {conf['every']}` under the host's supervisor")
    write_atomic(unit_dir / "wgmesh-pull.service", service_unit(), 0o644)
    write_atomic(unit_dir / "wgmesh-pull.timer", timer_unit(conf["every"]), 0o644)
    for argv in (["systemctl", "daemon-reload"],
                 ["systemctl", "enable", "--now", "wgmesh-pull.timer"]):
        subprocess.run(argv, check=True)
    return "systemd timer wgmesh-pull.timer started"
