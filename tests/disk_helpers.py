"""A full disk for the length of a ``with`` block: the process's file-size limit (RLIMIT_FSIZE) set so
low that writing past it fails with EFBIG (Python ignores SIGXFSZ), as a real full disk would stop a
write part-way. Only files this process writes are affected."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator


@contextlib.contextmanager
def full_disk(room: int = 200) -> Iterator[None]:
    """Writes past ``room`` bytes of a file fail inside the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (room, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def files_under(root) -> list[str]:
    """Every file below ``root`` (hidden temporaries included), relative, sorted."""
    from pathlib import Path

    root = Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
