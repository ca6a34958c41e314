"""What the lab promises never to change: the root network namespace's state, as text."""

import subprocess
from pathlib import Path

# Counters and per-boot values that move on their own, lab or no lab.
VOLATILE = ("nf_conntrack_count", "nf_conntrack_events", "netfilter.nf_log", "route.flush",
            "neigh.default.base_reachable_time", "ipv4.tcp_fastopen_key", "ipv6.route.flush",
            "ipv4.route.flush", "conf.all.stable_secret", "conf.default.stable_secret")

COMMANDS = (
    ("ip", "-d", "address"),
    ("ip", "route", "show", "table", "all"),
    ("ip", "-6", "route", "show", "table", "all"),
    ("ip", "rule"),
    ("ip", "-6", "rule"),
    ("nft", "list", "ruleset"),
)


def root_snapshot() -> dict[str, str]:
    """Addresses, links, routes, rules, nftables ruleset and net sysctls of this process's
    (the root) network namespace."""
    snap = {" ".join(c): subprocess.run(c, capture_output=True, text=True, check=True).stdout
            for c in COMMANDS}
    sysctls = []
    for path in sorted(Path("/proc/sys/net").rglob("*")):
        key = ".".join(path.relative_to("/proc/sys").parts)
        if not path.is_file() or any(v in key for v in VOLATILE):
            continue
        try:
            sysctls.append(f"{key} = {path.read_text().strip()}")
        except OSError:
            continue  # write-only or permission-restricted entries
    snap["sysctl net"] = "\n".join(sysctls)
    return snap
