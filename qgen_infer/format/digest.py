"""The ``.qgen`` checksum: SHA-256 over the metadata and the data region.

Version 2 hashes the canonical JSON of every ``__metadata__`` entry except ``checksum`` itself
(compact, key-sorted, ASCII), then the data region, so an edited config or solver is caught like a
flipped weight. Version 1 files (the models shipped before it) hashed the data region only; they
are still read, their metadata checked by the schema alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from qgen_infer.format import bounded_json
from qgen_infer.format.schema import CHECKSUM_PREFIX

_CHUNK = 1 << 20


def _covered_metadata(metadata: dict[str, str]) -> bytes:
    return bounded_json.dumps({k: v for k, v in metadata.items() if k != "checksum"}).encode()


def checksum(data: bytes | memoryview, metadata: dict[str, str] | None = None) -> str:
    """``sha256:<hex>`` of ``metadata`` (version 2; ``None``: version 1) then ``data``."""
    digest = hashlib.sha256()
    if metadata is not None:
        digest.update(_covered_metadata(metadata))
    digest.update(data)
    return CHECKSUM_PREFIX + digest.hexdigest()


def file_checksum(path: Path, data_start: int, metadata: dict[str, str] | None) -> str:
    """:func:`checksum` of a file's data region (bytes ``data_start`` to the end), read in
    chunks."""
    digest = hashlib.sha256()
    if metadata is not None:
        digest.update(_covered_metadata(metadata))
    with open(path, "rb") as fh:
        fh.seek(data_start)
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return CHECKSUM_PREFIX + digest.hexdigest()
