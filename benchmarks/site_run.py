"""Time the main job on a fresh lab: cold site.yml, then the no-change re-run.

    .venv/bin/python benchmarks/site_run.py [--rounds 2]

Brings up the default lab under its own name (wgbench), runs site.yml from bare hosts,
runs it again (must report changed=0 on every host), prints wall times, and takes the lab
down. Target: the no-change re-run under 20 s.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

from meshlab import MeshLab, recap  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cold, warm = [], []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            lab = MeshLab(Path(tmp), "wgbench")
            lab.lab.down()
            lab.lab.up()
            try:
                t0 = time.monotonic()
                first = lab.playbook()
                cold.append(time.monotonic() - t0)
                assert first.returncode == 0, first.stdout[-2000:]
                t1 = time.monotonic()
                second = lab.playbook()
                warm.append(time.monotonic() - t1)
                changed = {h: r["changed"] for h, r in recap(second.stdout).items()}
                assert second.returncode == 0 and not any(changed.values()), changed
            finally:
                lab.lab.down()
        hosts = len(re.findall(r"^\S+\s+: ok=", first.stdout, re.M))
        print(f"round {i + 1}: {hosts} hosts, cold site.yml {cold[-1]:.1f} s, "
              f"no-change re-run {warm[-1]:.1f} s (changed=0 everywhere)")
    print(f"cold median {statistics.median(cold):.1f} s; no-change median "
          f"{statistics.median(warm):.1f} s (target < 20 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
