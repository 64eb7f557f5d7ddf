"""File permissions that follow the user's umask.

Some writers (safetensors' serializer, ``tempfile``) create private ``0600`` files; on a shared
cluster teammates then cannot read a run. :func:`apply_umask` gives a written file the mode an
ordinary ``open`` would have given it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["apply_umask", "current_umask"]


def current_umask() -> int:
    """The process's umask (read from /proc on Linux, else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Set ``path``'s mode to ``0o666`` (files) or ``0o777`` (folders) minus the umask."""
    p = Path(path)
    base = 0o777 if p.is_dir() else 0o666
    mode = base & ~current_umask()
    if stat.S_IMODE(p.stat().st_mode) != mode:
        os.chmod(p, mode)
