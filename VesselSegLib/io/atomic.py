"""Write files whole or not at all: into a temporary file beside the target, renamed into place at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def default_file_mode(directory: bool = False) -> int:
    """The permissions a plain ``open()``/``mkdir()`` would give under the current umask.

    ``tempfile`` creates private (0600/0700) files; a published output should look like any other file.
    """
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextmanager
def atomic_write_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is deleted.

    ``suffix`` (default: the target's) is kept on the temporary name because writers such as SimpleITK and
    MRML storage nodes choose the format from it.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"Output folder {path.parent} does not exist; create it or choose another path.")
    handle, temporary_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix
    )
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        yield temporary
        os.chmod(temporary, default_file_mode())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_write_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new, empty temporary folder beside ``path``; on success it is renamed to ``path``, on error it
    is deleted with what was written into it.

    For outputs that are folders (an OME-Zarr image). ``path`` must not exist: a folder is never written over.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"Output folder {path.parent} does not exist; create it or choose another path.")
    if path.exists():
        raise ValueError(f"{path} already exists; choose a new name (VesselSeg never writes over it).")
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield temporary
        os.chmod(temporary, default_file_mode(directory=True))
        os.rename(temporary, path)  # fails, rather than merging, if a non-empty folder appeared meanwhile
    finally:
        if temporary.exists():  # only the folder made above, and what this run wrote into it
            shutil.rmtree(temporary)
