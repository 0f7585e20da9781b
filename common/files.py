"""Atomic file writes: a reader sees the old file or the whole new one, never half of it (a temp
file in the same folder, then a rename). Used for every manifest, cache and marker file. And
file stamps, which tell whether a file a record names has been rewritten since."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None] | str | bytes) -> Path:
    """Write ``path`` atomically; ``write`` is the content, or a function that writes to the open
    file (text mode for str content and functions, binary for bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if isinstance(write, bytes) else "w") as fh:
            if callable(write):
                write(fh)
            else:
                fh.write(write)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_stamp(path: str | os.PathLike) -> str:
    """Size and modification time of a file, ``"<bytes>:<mtime ns>"`` ("" when it is missing): what
    a record keeps to tell later whether the file it names has since been rewritten."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"
