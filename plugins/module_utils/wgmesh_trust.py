"""Signed manifests and the admins' trust: the rules a manifest is held to, in one copy for
the hosts (wgmesh_apply, which refuses before anything changes) and the controller (`wgmesh
manifest verify`, `host enrol`, kits). Standard library, and PyNaCl when a signature is
checked (Debian's python3-nacl on a host)."""

from __future__ import annotations

import base64
import hashlib
import re

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import canonical

FORMAT = 1
# An admin's name (wgmesh.grammar.NODE_NAME): names reach messages and the trust file.
ADMIN_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
# An ed25519 public key as base64 (wgmesh.grammar.PUBLIC_KEY: 32 bytes).
PUBLIC_KEY = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=", re.ASCII)
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


class Refused(Exception):
    """A manifest (or kit) not to act on; the message says why."""


def valid_trust(trust: object) -> bool:
    """Admins (name to public key, each key once: a key under two names would sign twice)
    and a threshold from 1 to their number."""
    return (isinstance(trust, dict) and isinstance(trust.get("admins"), dict)
            and bool(trust["admins"]) and isinstance(trust.get("threshold"), int)
            and not isinstance(trust["threshold"], bool)
            and 1 <= trust["threshold"] <= len(trust["admins"])
            and all(isinstance(n, str) and ADMIN_NAME.fullmatch(n) and isinstance(k, str)
                    and PUBLIC_KEY.fullmatch(k) for n, k in trust["admins"].items())
            and len(set(trust["admins"].values())) == len(trust["admins"]))


def check_shape(data: object) -> None:
    """A signed manifest's shape, before any of it is used."""
    if not isinstance(data, dict) or set(data) != {"manifest", "signatures"}:
        raise Refused("a signed manifest has exactly the keys manifest and signatures")
    body, sigs = data["manifest"], data["signatures"]
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise Refused(f"the manifest's format is not {FORMAT}")
    serial = body.get("serial")
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise Refused("the manifest's serial is not a whole number from 1")
    if not (isinstance(body.get("date"), str) and DATE.fullmatch(body["date"])):
        raise Refused("the manifest's date is not a date (YYYY-MM-DD)")
    if not isinstance(sigs, dict) or not all(isinstance(k, str) and ADMIN_NAME.fullmatch(k)
                                             and isinstance(v, str) for k, v in sigs.items()):
        raise Refused("signatures must map admin names to signatures")
    trust = body.get("trust")
    if not isinstance(trust, dict) or not isinstance(trust.get("admins"), dict) \
            or not isinstance(trust.get("threshold"), int):
        raise Refused("the manifest states no admins and threshold")
    if not isinstance(body.get("bundles"), dict) or not isinstance(body.get("inputs"), dict):
        raise Refused("the manifest lists no inputs or bundles")


def check_signatures(message: bytes, sigs: dict, trust: dict, what: str) -> list[str]:
    """The admins whose signatures of ``message`` hold, when at least the threshold do and
    no other name signed; raises Refused with the reason otherwise."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    admins = trust["admins"]
    unknown = sorted(set(sigs) - set(admins))
    if unknown:
        raise Refused(f"the {what} is signed by {', '.join(unknown)}, not an admin this "
                      "host trusts")
    valid, bad = [], []
    for name in sorted(sigs):
        try:
            VerifyKey(base64.b64decode(admins[name])).verify(message,
                                                             base64.b64decode(sigs[name]))
            valid.append(name)
        except (BadSignatureError, ValueError, TypeError):  # binascii.Error is a ValueError
            bad.append(name)
    if len(valid) < trust["threshold"]:
        why = f"; not valid for this {what}: {', '.join(bad)}" if bad else ""
        raise Refused(f"{len(valid)} valid signature(s) ({', '.join(valid) or 'none'}), "
                      f"{trust['threshold']} needed{why}")
    return valid


def verify(data: object, trust: dict, seen: dict | None = None) -> tuple[list[str], str]:
    """A signed manifest against a trust (admins, threshold) and what the host last ran
    (``seen``: serial, digest and date; none at enrolment). Returns the admins whose
    signatures hold and the manifest's digest; raises Refused otherwise."""
    check_shape(data)
    body = data["manifest"]
    message = canonical(body)
    valid = check_signatures(message, data["signatures"], trust, "manifest")
    digest = hashlib.sha256(message).hexdigest()
    seen = seen or {}
    serial = body["serial"]
    if serial < (seen.get("serial") or 0):
        raise Refused(f"manifest serial {serial} is lower than serial {seen['serial']} this "
                      "host runs (an older manifest is not taken again)")
    if serial == seen.get("serial") and digest != seen.get("digest"):
        raise Refused(f"manifest serial {serial} was already used by another manifest")
    # The date nodes' expiry is judged on only moves forward: an earlier one would bring a
    # node that expired back.
    if body["date"] < (seen.get("date") or ""):
        raise Refused(f"manifest serial {serial} is dated {body['date']}, earlier than "
                      f"{seen['date']} of the manifest this host runs (an expired node "
                      "would come back)")
    return valid, digest


def checked_trust(trust: object) -> dict:
    """``trust`` when it is one (valid_trust), else Refused."""
    if not valid_trust(trust):
        raise Refused("the trust (admins, each with a key of its own, and threshold) is not "
                      "valid")
    return trust


def accept(signed: dict, trust: dict, name: str, bundle_hash: str) -> dict:
    """What a host holds a signed manifest to before it runs bundle ``name`` (of canonical
    hash ``bundle_hash``): ``verify`` against the trust it has, the manifest lists this very
    bundle, and states a valid trust. Returns the trust to record, or raises Refused."""
    _, digest = verify(signed, trust, trust)
    body = signed["manifest"]
    serial = body["serial"]
    if body["bundles"].get(name) != bundle_hash:
        raise Refused(f"the manifest (serial {serial}) does not list this bundle for {name}: "
                      "it was not compiled from the signed inputs")
    if not valid_trust(body["trust"]):
        raise Refused("the manifest states no valid admins and threshold")
    return {"admins": body["trust"]["admins"], "threshold": body["trust"]["threshold"],
            "serial": serial, "digest": digest, "date": body["date"]}
