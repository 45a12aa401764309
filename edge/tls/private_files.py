# -*- test-case-name: tests.unit.tls.test_local_ca, tests.e2e.test_acme_resilience -*-
"""Files under ``state_dir``: private directories and atomic, durable writes.

Directories are 0700 whatever the umask (``mkdir``'s mode is masked by it,
so each one is ``chmod``-ed after it is made, and again if it exists: an
install made under umask 000 is mended).  A file is replaced by one
rename of a fsynced temp file, and the directory is fsynced after it, so
after a crash the name holds the old content or the new, never half, and
the rename itself is on disk.
"""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path, top: Path, mode: int = 0o700) -> Path:
    """Make ``path`` and every missing directory between ``top`` (included) and it; those under ``top``
    are set to 0700 (``path`` itself to ``mode``) even if they existed.  ``top`` itself (``state_dir``,
    which the user may have made on purpose) keeps its mode if it existed, else it is made 0711:
    traversable, not listable, so the local CA's public ``ca.pem`` can be read by its path."""
    path, top = Path(path), Path(top)
    if not top.exists():
        top.mkdir(parents=True, exist_ok=True, mode=0o711)
        os.chmod(top, 0o711)
    below = path.relative_to(top).parts
    current = top
    for index, part in enumerate(below):
        current = current / part
        current.mkdir(exist_ok=True, mode=0o700)
        os.chmod(current, mode if index == len(below) - 1 else 0o700)
    return path


def fsync_dir(path: Path) -> None:
    """Put a rename or unlink in ``path`` on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write atomically and durably (temp file, fsync, rename, fsync of the directory) with ``mode``
    from the start."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # an old temp file left by a crash keeps its own mode otherwise
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
