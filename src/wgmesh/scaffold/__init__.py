"""`wgmesh init DIR`: a repository for one's own mesh, ready for git and CI.

The files come from this folder; the role, modules and plugins are not copied (they are the
collection wgmesh.mesh inside the installed package, pinned by the site's requirements.txt).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from wgmesh.errors import InputError, Problem

HERE = Path(__file__).parent

# Where each file of this folder goes in the new repository.
FILES = {
    "ansible.cfg": "ansible.cfg",
    "site.yml": "site.yml",
    "mesh.yml": "inventories/prod/mesh.yml",
    "group_vars-all.yml": "inventories/prod/group_vars/all.yml",
    # Outside the inventory: Ansible would try to parse a policy beside mesh.yml.
    "policy.hujson": "policies/prod.hujson",
    "github-workflow.yml": ".github/workflows/wgmesh.yml",
    "gitlab-ci.yml": ".gitlab-ci.yml",
    "gitignore": ".gitignore",
}


def requirements() -> str:
    """What the site's CI jobs and controllers install: this wgmesh, by version."""
    return ("# The wgmesh this mesh runs with (its command, role, modules and plugins). CI\n"
            "# installs exactly this; raise it in a pull request of its own.\n"
            f"wgmesh=={metadata.version('wgmesh')}\n")


def write(target: Path) -> list[str]:
    """Write the repository into TARGET (absent or empty); the paths written, in order."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError([Problem(str(target), 0, 0, "", "exists and is not an empty folder",
                                  "name a new folder: wgmesh init never overwrites a file")])
    contents = {dest: (HERE / src).read_text() for src, dest in FILES.items()}
    contents["requirements.txt"] = requirements()
    for rel, text in contents.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(contents)
