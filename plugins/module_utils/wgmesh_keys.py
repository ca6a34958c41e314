"""WireGuard keys where they are born and checked: a new private key, and the public key of
one. With wg(8) where it is installed, else PyNaCl, else RFC 7748's X25519 in plain Python
(a host with neither still makes and reports its key). Standard library only."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess

P = 2**255 - 19
A24 = 121665


def x25519(k: bytes, u: int = 9) -> bytes:
    """RFC 7748 X25519 scalar multiplication (the base point by default: a public key)."""
    s = bytearray(k)
    s[0] &= 248
    s[31] &= 127
    s[31] |= 64
    scalar = int.from_bytes(s, "little")
    x1, x2, z2, x3, z3, swap = u, 1, 0, u, 1, 0
    for t in reversed(range(255)):
        bit = (scalar >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % P, (x2 - z2) % P
        aa, bb = a * a % P, b * b % P
        e = (aa - bb) % P
        c, d = (x3 + z3) % P, (x3 - z3) % P
        da, cb = d * a % P, c * b % P
        x3 = (da + cb) ** 2 % P
        z3 = x1 * (da - cb) ** 2 % P
        x2 = aa * bb % P
        z2 = e * (aa + A24 * e) % P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


def generate_private() -> str:
    """A new private key, base64 (clamped as wg genkey's)."""
    wg = shutil.which("wg")
    if wg:
        return subprocess.run([wg, "genkey"], capture_output=True, text=True,
                              check=True).stdout.strip()
    raw = bytearray(os.urandom(32))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return base64.b64encode(bytes(raw)).decode()


def public_of(private: str) -> str:
    """The public key of a private key (both base64)."""
    wg = shutil.which("wg")
    if wg:
        return subprocess.run([wg, "pubkey"], input=private.strip() + "\n",
                              capture_output=True, text=True, check=True).stdout.strip()
    raw = base64.b64decode(private)
    try:
        from nacl.bindings import crypto_scalarmult_base
    except ImportError:
        return base64.b64encode(x25519(raw)).decode()
    return base64.b64encode(crypto_scalarmult_base(raw)).decode()
