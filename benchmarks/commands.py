"""The `wgmesh` commands as users run them (a fresh process each), with wall time and peak
memory, beside the in-process compile figures of benchmarks/compile.py.

    .venv/bin/python benchmarks/commands.py [--sizes 100,1000,5000]

The mesh and policy are compile.py's (50 tags, 200 rules, 20 groups of 10 users), pinned
once with `wgmesh lock`. Each command is timed by /usr/bin/time (%e wall, %M peak RSS).
Targets on a 2-core machine: `render --all --out` at 1,000 nodes under 5 s and 500 MiB,
at 5,000 nodes under 1.5 GiB; `render --host` at 5,000 nodes under 1 s; `plan` (one rule
added, against a copy of the inputs before it) at 1,000 nodes in a few seconds; `check`
plus `plan`, what a pull request waits for, at 5,000 nodes under 60 s.

Then the mesh is signed (every node's key pinned, two admins, threshold 2): `manifest
create` and `manifest sign` compile every host's bundle; `render --host` in the signed mesh
is what a host in pull mode compiles for itself.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compile import write_inputs  # noqa: E402 - the sibling benchmark's generator

WGMESH = str(Path(sys.executable).parent / "wgmesh")


def timed(argv: list[str], stdin: str | None = None, ok: tuple[int, ...] = (0,)
          ) -> tuple[float, float]:
    """(wall seconds, peak MiB) of one command; its output is discarded."""
    out = subprocess.run(["/usr/bin/time", "-f", "%e %M", *argv], input=stdin, text=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out.stderr.strip().splitlines()[-1]
    if out.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr[-2000:]}")
    wall, rss_kib = last.split()
    return float(wall), int(rss_kib) / 1024


def commands(d: Path, host: str) -> list[tuple[str, list[str], str | None]]:
    query = json.dumps({"src": host, "dst": host.replace("1", "2", 1), "proto": "tcp",
                        "port": 22}) + "\n"
    return [
        ("check", [WGMESH, "check", "-i", str(d)], None),
        ("render --host", [WGMESH, "render", "-i", str(d), "--host", host], None),
        ("eval (one query)", [WGMESH, "eval", "-i", str(d)], query),
        ("render --all (stdout)", [WGMESH, "render", "-i", str(d), "--all"], None),
        ("render --all --out", [WGMESH, "render", "-i", str(d), "--all", "--out",
                                str(d / "out")], None),
    ]


def plan_command(d: Path) -> list[str]:
    """The inputs as they are become the base; the head gains one rule (tag 0 to tag 1)."""
    base = d / "base"
    base.mkdir()
    for name in ("mesh.yml", "policy.hujson", "mesh.lock.yml"):
        shutil.copy(d / name, base / name)
    policy = json.loads((d / "policy.hujson").read_text())
    tags = list(policy["tagOwners"])
    policy["acls"].append({"action": "accept", "src": [tags[0]], "dst": [f"{tags[1]}:9999"]})
    (d / "policy.hujson").write_text(json.dumps(policy, indent=1))
    return [WGMESH, "plan", "-i", str(d), "--base", str(base)]


def signed_commands(d: Path, host: str) -> list[tuple[str, list[str], str | None]]:
    """Pin a key for every node, add a signing section (two admins), then the commands."""
    import yaml

    from wgmesh.lock import Lock
    from wgmesh.mesh import load_mesh

    mesh = load_mesh(d)
    lock = Lock(mesh.lock_path)
    lock.allocate(mesh)
    for name in mesh.nodes:
        lock.pin_key(name, base64.b64encode(hashlib.sha256(name.encode()).digest()).decode())
    lock.save()
    admins = {}
    for name in ("ann", "ben"):
        admins[name] = subprocess.run([WGMESH, "admin", "keygen", "--out",
                                       str(d / f"{name}.key")], capture_output=True,
                                      text=True, check=True).stdout.strip()
    data = yaml.safe_load((d / "mesh.yml").read_text())
    data["signing"] = {"threshold": 2, "admins": admins}
    (d / "mesh.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    return [
        ("manifest create", [WGMESH, "manifest", "create", "-i", str(d)], None),
        ("manifest sign", [WGMESH, "manifest", "sign", "-i", str(d), "--key",
                           str(d / "ann.key")], None),
        ("render --host (signed)", [WGMESH, "render", "-i", str(d), "--host", host], None),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    print(f"{'nodes':>6}  {'command':<22} {'wall':>8} {'peak':>10}")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            write_inputs(d, n)
            wall, peak = timed([WGMESH, "lock", "-i", str(d)])
            print(f"{n:>6}  {'lock (first pin)':<22} {wall:>7.2f}s {peak:>6.0f} MiB")
            walls = {}
            for name, argv, stdin in commands(d, f"node{n // 2:05d}"):
                wall, peak = timed(argv, stdin)
                walls[name] = wall
                print(f"{n:>6}  {name:<22} {wall:>7.2f}s {peak:>6.0f} MiB", flush=True)
            # 4: access widens (0 at 100 nodes, where no pair gains).
            wall, peak = timed(plan_command(d), ok=(0, 3, 4))
            print(f"{n:>6}  {'plan (a rule added)':<22} {wall:>7.2f}s {peak:>6.0f} MiB",
                  flush=True)
            # What a pull request waits for (target: under 60 s at 5,000 nodes).
            print(f"{n:>6}  {'check + plan':<22} {walls['check'] + wall:>7.2f}s",
                  flush=True)
            for name, argv, stdin in signed_commands(d, f"node{n // 2:05d}"):
                wall, peak = timed(argv, stdin)
                print(f"{n:>6}  {name:<22} {wall:>7.2f}s {peak:>6.0f} MiB", flush=True)
            size = (d / "manifest.json").stat().st_size / 1024
            print(f"{n:>6}  {'manifest.json size':<22} {size:>7.0f} KiB", flush=True)
    print("\nIn one process (benchmarks/compile.py, one round):", flush=True)
    subprocess.run([sys.executable, str(HERE / "compile.py"), "--sizes", args.sizes,
                    "--rounds", "1"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
