"""Saved models: tensors in ``<name>.safetensors`` plus ``<name>.json`` with a schema version.

Every format change bumps the caller's schema version; loading refuses any other version with a
message that says what to do, instead of reading a file it may misinterpret.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(folder: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any], schema_version: int) -> None:
    """Write ``folder/<name>.safetensors`` and ``folder/<name>.json`` (``schema_version`` first)."""
    folder = Path(folder)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps({"schema_version": schema_version, **meta}, indent=2) + "\n")


def load_checkpoint(folder: Path, name: str, schema_version: int, what: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(meta, tensors)`` of a checkpoint written with ``schema_version``; other versions are refused."""
    folder = Path(folder)
    meta = json.loads((folder / f"{name}.json").read_text())
    if meta.get("schema_version") != schema_version:
        raise ValueError(
            f"{folder / f'{name}.json'}: {what} schema version {meta.get('schema_version')} is not the "
            f"supported version {schema_version}; retrain the {what} (delete this cache folder)."
        )
    return meta, load_file(str(folder / f"{name}.safetensors"))
