"""sha256 of files: model identity, artifact manifests and their verification (stdlib only, so the artifact
runner can use it with nothing but numpy and one backend runtime installed)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
