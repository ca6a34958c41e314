"""What wg(8) says of a running interface, and what a rendered wg-quick file asks of it, read
once for the hosts (wgmesh_apply, the monitor) and the controller (the status play's
filters). Standard library only."""

from __future__ import annotations

import re


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


def parse_conf(text: str) -> dict:
    """[Interface] and [Peer] sections of a wg(8)/wg-quick file, keys lower-cased."""
    conf: dict = {"interface": {}, "peers": []}
    section = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.lower() == "[interface]":
            section = conf["interface"]
        elif line.lower() == "[peer]":
            section = {}
            conf["peers"].append(section)
        elif "=" in line and section is not None:
            key, value = (x.strip() for x in line.split("=", 1))
            section.setdefault(key.lower(), []).append(value)
    return conf


def desired_peers(conf: dict) -> dict[str, dict]:
    """Per public key of a parsed file's peers: allowed IPs (a set), keepalive, endpoint."""
    out = {}
    for p in conf["peers"]:
        key = p["publickey"][0]
        allowed = {a.strip() for v in p.get("allowedips", []) for a in v.split(",")
                   if a.strip()}
        out[key] = {"allowed": allowed,
                    "keepalive": int(p.get("persistentkeepalive", ["0"])[0] or 0),
                    "endpoint": p.get("endpoint", [None])[0]}
    return out


# The comment the renderer puts above each peer's key:
# "# NAME (CONNECTION[ via RELAY][, ROLE/ROLE])".
PEER_COMMENT = re.compile(
    r"^# (\S+) \(([a-z]+)(?: via ([^\s,)]+))?(?:, [^)\n]*)?\)\n\s*PublicKey = (\S+)", re.M)


def peer_paths(conf_text: str) -> dict[str, dict]:
    """Public key -> the peer's name, its compiled connection (lan, direct, relay) and
    relay (None unless relayed), from a rendered file's comments."""
    return {key: {"name": name, "connection": connection, "relay": relay or None}
            for name, connection, relay, key in PEER_COMMENT.findall(conf_text)}


def peer_names(conf_text: str) -> dict[str, str]:
    """Public key -> peer name, from the comment the renderer puts above each key."""
    return {key: p["name"] for key, p in peer_paths(conf_text).items()}
