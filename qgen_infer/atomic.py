"""Atomic file writes whose failures are one line: a unique temporary file beside the target,
then a rename, so a reader never sees half a file and an interrupted write leaves none.

The temporary name is unique (``tempfile.mkstemp``), so a folder or a stale file that happens to
be called ``<name>.tmp`` is never in the way; any ``OSError`` (missing folder, no permission,
disk full, a folder where the file should go) becomes a :class:`QgenError` naming the path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from qgen_infer.errors import QgenError


def default_mode(folder: bool = False) -> int:
    """The mode ``open()`` (or ``mkdir``) would give a new file (folder) under the umask;
    ``mkstemp``'s files and ``mkdtemp``'s folders are owner-only."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def write_error(path: str | Path, exc: OSError) -> QgenError:
    """The one-line error for a failed write of ``path``."""
    reason = exc.strerror or type(exc).__name__
    return QgenError(f"cannot write {str(path)!r} ({reason})")


@contextmanager
def staged(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Yield one temporary path per target; on a clean exit rename them all onto the targets
    (all outputs or none), on any error remove them. OSErrors become one :class:`QgenError`."""
    targets = [Path(p) for p in paths]
    tmps: list[Path] = []
    current = targets[0] if targets else Path(".")
    try:
        for target in targets:
            current = target
            if target.is_dir():
                raise QgenError(f"cannot write {str(target)!r}: it is a folder")
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=target.parent)
            os.close(fd)
            tmps.append(Path(name))
            os.chmod(name, default_mode())
        yield tmps
        for tmp, target in zip(tmps, targets, strict=True):
            current = target
            os.replace(tmp, target)
    except OSError as exc:
        raise write_error(current, exc) from None
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[IO[Any]], Any]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    with staged([path]) as (tmp,):
        try:
            with open(tmp, "wb") as fh:
                write(fh)
        except OSError as exc:
            raise write_error(path, exc) from None
