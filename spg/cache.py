"""A content-addressed artifact cache.

Every artifact (token features, a trained SAE, trained guides, evaluation maps) lives in
``<cache_dir>/<kind>/<key>/`` where ``key`` is a hash of everything that determines its content:
the stage config, the keys of its inputs and the artifact's schema version. Re-running a stage with
the same parameters finds the folder and reuses it; a changed parameter gives a new key, so a stale
result is never read. Folders are written under a temporary name and renamed into place when
complete, so an interrupted run never leaves a half-written artifact behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import load_json, save_json, stable_hash

KEY_FILE = "key.json"


def default_cache_dir() -> Path:
    """``$SPG_CACHE_DIR`` if set, else ``~/.cache/spg``."""
    env = os.environ.get("SPG_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spg"


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def artifact_path(cache_dir: Path, kind: str, key: dict[str, Any]) -> Path:
    """The folder an artifact of ``kind`` with identity ``key`` lives in (it may not exist yet)."""
    return Path(cache_dir) / kind / stable_hash(key)


def is_complete(path: Path) -> bool:
    """True when ``path`` holds a finished artifact (it was renamed into place with its key)."""
    return (Path(path) / KEY_FILE).is_file()


@contextlib.contextmanager
def atomic_artifact(path: Path, key: dict[str, Any]) -> Iterator[Path]:
    """Yield a temporary folder to write an artifact into; rename it to ``path`` on success.

    On an exception the temporary folder is removed and ``path`` is untouched. If another process
    finished the same artifact first, its copy is kept and ours is discarded (same key, same content).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        save_json(key, tmp / KEY_FILE)
        try:
            os.rename(tmp, path)
        except OSError:
            if not is_complete(path):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_key(path: Path) -> dict[str, Any]:
    return load_json(Path(path) / KEY_FILE)
