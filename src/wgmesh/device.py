"""Devices wgmesh does not manage (phones, tablets, a colleague's laptop): enrolment and the
configuration the WireGuard apps import.

A device's key pair is made here, in memory: only the public key goes into mesh.yml, and the
private key is printed once inside the configuration (and its QR code), or written to a 0600
file when asked. The configuration is plain WireGuard: no PostUp, no ruleset, no hop tunnel.
The device has no filter of its own; its peers filter what it sends and receives.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from nacl.public import PrivateKey
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from wgmesh import grammar
from wgmesh.compile.hostoutput import HostOutput
from wgmesh.errors import InputError, Problem, write_atomic
from wgmesh.mesh import Network
from wgmesh.mesh import resolve_path as resolve_mesh_path
from wgmesh.render import clean, clean_key, peer_block


def new_key_pair() -> tuple[str, str]:
    """(private, public) WireGuard keys, base64, made from the OS's randomness."""
    sk = PrivateKey.generate()
    return (base64.b64encode(bytes(sk)).decode(), base64.b64encode(bytes(sk.public_key)).decode())


def read_private_key(path: Path) -> str:
    key = path.read_text().strip()
    if not grammar.public_key(key):  # 32 bytes in base64, the same shape as a public key
        raise InputError([Problem(str(path), 1, 1, "", "is not a WireGuard private key",
                                  "pass the file `wgmesh device add --key-out` wrote")])
    return key


def add_to_mesh(inventory: str | Path, name: str, owner: str | None, tags: list[str],
                public_key: str) -> Path:
    """Add ``name`` to mesh.yml as a device (managed: false, its public key), keeping the
    file's comments and order; written atomically. Returns the file's path."""
    path = resolve_mesh_path(inventory)
    problems = []
    if not grammar.matches(grammar.NODE_NAME, name):
        problems.append(Problem(str(path), 0, 0, f"nodes.{name}", "is not a node name",
                                "lower-case letters, digits and dashes, e.g. carol-phone"))
    if owner is not None and not grammar.matches(grammar.USER, owner):
        problems.append(Problem(str(path), 0, 0, f"nodes.{name}.owner", f'"{owner}" is not a '
                                "user", "write users as carol@example.com"))
    for tag in tags:
        if not grammar.matches(grammar.TAG, tag):
            problems.append(Problem(str(path), 0, 0, f"nodes.{name}.tags",
                                    f'"{tag}" is not a tag', "e.g. tag:phone"))
    if problems:
        raise InputError(problems)
    yaml = YAML()
    yaml.preserve_quotes = True
    data = yaml.load(path.read_text())
    nodes = data.get("nodes")
    if name in (nodes or {}):
        raise InputError([Problem(str(path), 0, 0, f"nodes.{name}", "already exists",
                                  "pick another name, or remove the node first")])
    entry = CommentedMap()
    if owner:
        entry["owner"] = owner
    if tags:
        seq = CommentedSeq(tags)
        seq.fa.set_flow_style()
        entry["tags"] = seq
    entry["managed"] = False
    entry["public_key"] = public_key
    if nodes is None:
        data["nodes"] = nodes = CommentedMap()
    nodes[name] = entry
    out = io.StringIO()
    yaml.dump(data, out)
    write_atomic(path, out.getvalue(), mode=None)  # mesh.yml keeps its mode
    return path


def client_config(host: HostOutput, net: Network, private_key: str | None
                  ) -> tuple[str, list[str]]:
    """The configuration a WireGuard app (or wg-quick) imports, and the peers left out with
    the reason. AllowedIPs are what the compiler gives the device's peer entries: their mesh
    addresses, the routes policy lets it use, the default route of the exit node it uses."""
    clean(host.name, str(host.ipv4), str(host.ipv6))
    lines = [f"# wgmesh: {host.name}, a device wgmesh does not manage (WireGuard app or "
             "wg-quick).",
             "# It has no filter of its own: its peers filter what it sends and receives.",
             "[Interface]"]
    if private_key:
        clean_key(private_key)
        lines.append(f"PrivateKey = {private_key}")
    else:
        lines.append("# PrivateKey: the device keeps the key made at enrolment; wgmesh never "
                     "stored it")
    lines += [f"Address = {host.ipv4}/32, {host.ipv6}/128", f"MTU = {net.mtu}"]
    # The mesh resolvers it may ask (of the peers this configuration holds), then the mesh
    # domain to search, for bare node names.
    held = {a for p in host.peers if p.public_key for a in p.allowed_ips}
    servers = [a for a in host.dns_servers if f"{a}/32" in held or f"{a}/128" in held]
    if servers:
        clean(*servers, net.domain)
        lines.append(f"DNS = {', '.join(servers)}, {net.domain}")
    left_out = [f"{name}: both sides are behind NAT and a WireGuard app cannot use a relay "
                "(give one of them an endpoint, or put them on one site)"
                for name in host.unreachable]
    for peer in host.peers:
        if not peer.public_key:
            left_out.append(f"{peer.name}: its public key is not known yet (run site.yml, "
                            "then export again)")
        else:
            lines.append(peer_block(peer))
    return "\n".join(lines) + "\n", left_out


def qr(text: str, name: str):
    """A QR code of the configuration (segno: pure Python, PNG and SVG without other
    packages); an input error when the configuration does not fit in one."""
    import segno
    from segno.encoder import DataOverflowError

    try:
        return segno.make(text, error="l", micro=False)
    except DataOverflowError:
        raise InputError([Problem(
            name, 0, 0, "", f"its configuration ({len(text.encode())} bytes, with every peer "
            "it may reach) is too large for one QR code",
            "add it with --no-qr --key-out FILE and give the device the configuration as a "
            "file (wgmesh device config NAME --key-file FILE --no-qr > NAME.conf)")]) from None
