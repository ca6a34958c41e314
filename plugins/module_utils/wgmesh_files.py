"""Files on a host and on the controller, written whole. Standard library only."""

from __future__ import annotations

import os
import tempfile


def read_text(path: str | os.PathLike) -> str | None:
    """A file's text; None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def read_bytes(path: str | os.PathLike) -> bytes | None:
    """A file's bytes; None when it does not exist."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def write_atomic(path: str | os.PathLike, data: str | bytes | None, mode: int | None, *,
                 dir_mode: int | None = None, owner: tuple[int, int] | None = None) -> None:
    """Write beside the file and rename over it, so a reader sees the old or the new one;
    ``None`` removes the file. ``mode``: the new file's, set before the rename (a secret is
    never readable by others); None keeps the old file's (0644 for a new one). ``dir_mode``:
    make the folder (and its parents) with this mode when it is missing. ``owner``: (uid,
    gid) of the new file."""
    path = os.fspath(path)
    if data is None:
        if os.path.lexists(path):
            os.unlink(path)
        return
    directory = os.path.dirname(path) or "."
    if dir_mode is not None:
        os.makedirs(directory, mode=dir_mode, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is None:
            mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_system_file(path: str, text: str) -> None:
    """/etc/hosts and /etc/resolv.conf may be bind mounts (containers): written in place
    when they cannot be replaced."""
    try:
        write_atomic(path, text, 0o644, dir_mode=0o755)
    except OSError:
        with open(path, "w") as fh:
            fh.write(text)
