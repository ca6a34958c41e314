"""What every command group shares: exit codes, the mesh arguments, building from them, and
the warnings a compile prints."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

from wgmesh.build import build
from wgmesh.errors import InputError, Problem


def default_inventory() -> str:
    """The inventory Ansible would use with no -i: $ANSIBLE_INVENTORY, else the `inventory`
    of the ansible.cfg Ansible would read ($ANSIBLE_CONFIG, ./ansible.cfg, ~/.ansible.cfg,
    /etc/ansible/ansible.cfg), relative to that file; its first entry."""
    import configparser

    if os.environ.get("ANSIBLE_INVENTORY"):
        return os.environ["ANSIBLE_INVENTORY"].split(",")[0].strip()
    env = os.environ.get("ANSIBLE_CONFIG")
    candidates = [Path("ansible.cfg"), Path.home() / ".ansible.cfg",
                  Path("/etc/ansible/ansible.cfg")]
    if env:
        candidates.insert(0, Path(env) / "ansible.cfg" if Path(env).is_dir() else Path(env))
    for cfg in candidates:
        if cfg.is_file():
            parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
            try:
                parser.read(cfg)
            except configparser.Error:
                break
            value = parser.get("defaults", "inventory", fallback="").split(",")[0].strip()
            if value:
                return str(cfg.resolve().parent / os.path.expanduser(value))
            break  # Ansible reads one configuration file only
    raise InputError([Problem("-i", 0, 0, "", "no inventory given, and no ansible.cfg here "
                              "names one", "pass -i DIR (the folder with mesh.yml), or set "
                              "inventory = DIR under [defaults] in ansible.cfg")])


# Exit codes, the same for every command (the README's table; plan's 3 and 4 live in plan.py).
EXIT_OK = 0


EXIT_FAILED = 1  # a check failed: a policy test, a stale lockfile (--locked), a lab step, why


EXIT_INPUT = 2  # usage or input error: nothing was changed or judged


EXIT_DRIFT = 5  # status: a host does not run what the inputs say


EXIT_UNREACHED = 6  # status: a host could not be reached, or the status run itself failed


# What playbooks/status.yml says of a host that drifts.
DRIFT_MESSAGE = "does not run what the inputs say"


def mesh_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--inventory", metavar="PATH",
                   help="inventory directory or its mesh.yml (default: ansible.cfg's "
                   "inventory, as Ansible finds it)")
    p.add_argument("--policy", metavar="FILE", help="use this policy instead of mesh.yml's")
    p.add_argument("--today", metavar="YYYY-MM-DD", type=dt.date.fromisoformat,
                   help="the date node expiry is judged against (default: today, UTC)")


def build_from_args(args, run_tests: bool = True):
    # Without --today: today (UTC), or a signed mesh's manifest date.
    return build(args.inventory, args.policy, today=args.today, run_tests=run_tests)


def compile_warnings(b) -> list[str]:
    """Everything a compile warns of, one line each."""
    out = list(b.warnings)
    out += [f"node {n} has expired and is left out" for n in b.resolution.expired]
    if b.lock.allocated:
        out.append(f"{len(b.lock.allocated)} node(s) have no address in {b.lock.path} yet "
                   f"({', '.join(b.lock.allocated[:5])}"
                   f"{', ...' if len(b.lock.allocated) > 5 else ''}"
                   "): shown with the addresses `wgmesh lock` (or a site.yml run) would pin")
    return out


def warn(b) -> None:
    for w in compile_warnings(b):
        print(f"warning: {w}", file=sys.stderr)


def unsigned_warnings(b) -> list[str]:
    """A signed mesh whose manifest does not (yet) cover these inputs: hosts will refuse."""
    from wgmesh import signing

    if b.mesh.signing is None:
        return []
    path = b.mesh.signing.manifest_path
    if b.manifest is None:
        why = [f"there is no {path}"]
    else:
        why = signing.check_inputs(b, b.manifest)
        try:
            signing.verify(b.manifest, signing.trust_of(b))
        except signing.Refused as exc:
            why.append(str(exc))
    return [f"signed mesh: {line}; hosts refuse these inputs until `wgmesh manifest create` "
            "and enough `wgmesh manifest sign`" for line in why]


def warn_unsigned(b) -> None:
    for w in unsigned_warnings(b):
        print(f"warning: {w}", file=sys.stderr)


def project_folder(play: str) -> Path | None:
    """The project folder (the one with ansible.cfg and ``play``), found upward from here."""
    here = Path.cwd().resolve()
    project = next((d for d in (here, *here.parents)
                    if (d / "ansible.cfg").is_file() and (d / play).is_file()), None)
    if project is None:
        print(f"error: no wgmesh project (ansible.cfg and {play}) here or above",
              file=sys.stderr)
    return project
