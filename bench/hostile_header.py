"""Duplicate-name check of a .qgen header before and after issue 25, in the same run.

Before (commit 0b790a3): one regex scan of the whole header per tensor or metadata name, so N
names cost O(N * header) = O(N^2). After: one pass of Python's C JSON scanner whose
``object_pairs_hook`` keeps each object's key set (``reader._check_header_keys``). Each header
is the tiny MLP test model's plus N one-byte tensors. Usage::

    OMP_NUM_THREADS=1 python bench/hostile_header.py
"""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qgen_infer.checkpoint import load_checkpoint
from qgen_infer.errors import FormatError
from qgen_infer.export import build_qgen_file
from qgen_infer.format import read_qgen, serialize
from qgen_infer.format import reader as new_reader

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "0b790a3"


def old_reader(folder: Path):
    source = subprocess.run(["git", "show", f"{BEFORE}:qgen_infer/format/reader.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    (folder / "old_reader.py").write_text(source)
    spec = importlib.util.spec_from_file_location("old_reader", folder / "old_reader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_names(header: dict, data: bytes, count: int, path: Path) -> int:
    """Write the header plus ``count`` one-byte tensors to ``path``; returns the data offset."""
    h = dict(header)
    for i in range(count):
        h[f"t{i}"] = {"dtype": "U8", "shape": [1],
                      "data_offsets": [len(data) + i, len(data) + i + 1]}
    raw = json.dumps(h).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data + bytes(count))
    return 8 + len(raw)


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_checkpoint

    folder = Path(tempfile.mkdtemp())
    old = old_reader(folder)
    blob = serialize(build_qgen_file(load_checkpoint(make_checkpoint(folder / "m.pt")))[0])
    (n,) = struct.unpack_from("<Q", blob)
    header, data = json.loads(blob[8:8 + n]), blob[8 + n:]
    print("| names | header | before (s) | after (s) | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for count in (1000, 2000, 4000, 8000):
        path = folder / f"h{count}.qgen"
        start = with_names(header, data, count, path)
        names = [*json.loads(path.read_bytes()[8:start]).keys(), *header["__metadata__"]]
        t0 = time.perf_counter()
        old._check_unique_keys(path, start, names)
        t1 = time.perf_counter()
        new_reader._check_header_keys(path, start)
        t2 = time.perf_counter()
        print(f"| {count:,} | {(start - 8) / 1e6:.2f} MB | {t1 - t0:.3f} | {t2 - t1:.4f} | "
              f"{(t1 - t0) / (t2 - t1):,.0f}x |")
    path = folder / "h100000.qgen"
    start = with_names(header, data, 100_000, path)
    t0 = time.perf_counter()
    try:
        read_qgen(path)
    except FormatError as exc:
        reason = str(exc).split(": ", 1)[1]
    print(f"\n100,000 names ({(start - 8) / 1e6:.2f} MB header): read_qgen refuses in "
          f"{time.perf_counter() - t0:.3f} s ({reason})")


if __name__ == "__main__":
    main()
