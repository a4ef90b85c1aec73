"""Snapshot copies of run folders that another process is still training, so they can be scored
without ever being written to or read half-written.

qgen-train writes ``model.pt`` atomically (a temporary file, then a rename: see
``qgen_infer.atomic``), so one ``open`` of it always reads one complete checkpoint, even when a
newer one replaces it meanwhile. The copy is then loaded (``load_checkpoint``: format, weights
finite) before it takes the place of an older snapshot, and ``log.jsonl`` is cut to the epochs
the copied checkpoint holds: qgen-train appends an epoch's log line just after saving its
checkpoint, so a log read a moment later may already hold one more epoch than the copy.

A snapshot folder ``SNAP/NAME`` is laid out like a run folder (model.pt, log.jsonl, config.json)
plus ``source.json`` (where it came from, that file's size and mtime, the epochs and steps), so
the scoring queue treats it as a run; a source whose size and mtime are unchanged is not copied
again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from paper_repro.status import log_records

SOURCE = "source.json"


class SnapshotError(RuntimeError):
    """A run folder whose checkpoint cannot be snapshotted (unreadable, corrupt): one line."""


@dataclass(frozen=True)
class SnapshotInfo:
    source: str  # the run folder copied
    size: int  # bytes of the source model.pt when copied
    mtime_ns: int  # its modification time (a new epoch's checkpoint changes it)
    epochs: int  # epochs the copied checkpoint holds
    step: int  # Adam steps it holds
    wall_time_s: float  # training-loop seconds behind it (qgen-train's wall_time_s)
    copied_utc: str


def load_info(snap_dir: Path) -> SnapshotInfo | None:
    try:
        return SnapshotInfo(**json.loads((snap_dir / SOURCE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _log_lines(run_dir: Path, epochs: int, train: dict) -> list[str]:
    """log.jsonl lines up to ``epochs`` (the last record of each epoch); when the source log
    does not reach the checkpoint's epoch yet, a line made from the checkpoint's own record."""
    for attempt in range(3):
        by_epoch = {}
        for rec in log_records(run_dir):
            try:
                e = int(rec.get("epoch", 0))
            except (TypeError, ValueError):
                continue
            if 0 < e <= epochs:
                by_epoch[e] = rec
        if epochs in by_epoch or epochs == 0:
            break
        time.sleep(0.2 * (attempt + 1))  # the append follows the save within milliseconds
    else:
        by_epoch[epochs] = {"epoch": epochs, "step": int(train.get("step", 0)),
                            "wall_time_s": float(train.get("wall_time_s", 0.0))}
    return [json.dumps(by_epoch[e]) for e in sorted(by_epoch)]


def snapshot_run(run_dir: Path, snap_dir: Path) -> SnapshotInfo | None:
    """Bring ``snap_dir`` up to date with ``run_dir``'s latest checkpoint; None when the run has
    no checkpoint yet (nothing to score). Raises :class:`SnapshotError` when the checkpoint
    cannot be copied or does not load; an earlier good snapshot is then left as it was."""
    from qgen_infer.checkpoint import load_checkpoint
    from qgen_infer.errors import QgenError

    src = run_dir / "model.pt"
    try:
        st = src.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotError(f"cannot read {src} ({exc.strerror})") from None
    old = load_info(snap_dir)
    if (old is not None and (old.size, old.mtime_ns) == (st.st_size, st.st_mtime_ns)
            and (snap_dir / "model.pt").is_file()):
        return old
    snap_dir.mkdir(parents=True, exist_ok=True)
    tmp = snap_dir / ".model.pt.copying"
    try:
        with open(src, "rb") as fin:  # one open: one complete checkpoint (atomic renames)
            st = os.fstat(fin.fileno())
            with open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 22)
        try:
            ckpt = load_checkpoint(tmp)
        except QgenError as exc:
            raise SnapshotError(str(exc).replace(repr(str(tmp)), str(src))) from None
        train = ckpt["train"]
        epochs = int(train.get("epochs", 0))
        lines = _log_lines(run_dir, epochs, train)
        (snap_dir / "log.jsonl").write_text("\n".join(lines) + "\n")
        if (run_dir / "config.json").is_file():
            shutil.copyfile(run_dir / "config.json", snap_dir / "config.json")
        os.replace(tmp, snap_dir / "model.pt")
    except OSError as exc:
        raise SnapshotError(f"cannot snapshot {src} ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    info = SnapshotInfo(str(run_dir), st.st_size, st.st_mtime_ns, epochs,
                        int(train.get("step", 0)), float(train.get("wall_time_s", 0.0)),
                        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    (snap_dir / SOURCE).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info
