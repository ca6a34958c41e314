"""What wg(8) says of a running interface, read once for the hosts (wgmesh_apply) and the
controller (the status play's filters). Standard library only."""

from __future__ import annotations


def parse_dump(text: str) -> tuple[int, dict[str, dict]]:
    """`wg show IFACE dump`: the listen port (0 when the output is empty), and per peer's
    public key its endpoint (None when it has none), allowed IPs (a set), latest handshake
    (seconds since the epoch, 0 never), bytes received and sent, and keepalive (0 off)."""
    lines = text.splitlines()
    port = int(lines[0].split("\t")[2]) if lines else 0
    peers = {}
    for line in lines[1:]:
        f = line.split("\t")
        peers[f[0]] = {"endpoint": None if f[2] == "(none)" else f[2],
                       "allowed": set() if f[3] == "(none)" else set(f[3].split(",")),
                       "handshake": int(f[4]), "rx": int(f[5]), "tx": int(f[6]),
                       "keepalive": 0 if f[7] == "off" else int(f[7])}
    return port, peers
