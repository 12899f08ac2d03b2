"""Finding, verifying and loading backbone weight files.

Resolution order for the model-hub backbones (:func:`resolve_hub_weights`):

1. an explicit file (``weights=...``),
2. the environment variable ``SPG_WEIGHTS_<NAME>``,
3. the local Hugging Face cache (and other local caches), without any network access,
4. a download from the hub, attempted only when the hub host answers a TCP probe within a few
   seconds (so that an offline machine fails at once instead of retrying for minutes).

When all fail, :class:`~spg.backbones.base.WeightsNotFoundError` explains every way to provide the
weights.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from .base import WeightsChecksumError, WeightsInfo, WeightsMismatchError, WeightsNotFoundError

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def env_var_for(backbone_name: str) -> str:
    """Environment variable that may hold a weights path for ``backbone_name``."""
    return "SPG_WEIGHTS_" + "".join(c if c.isalnum() else "_" for c in backbone_name.upper())


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file (memoised per path, size and mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def verify_sha256(path: str | os.PathLike[str], expected: str, how_to_fix: str) -> str:
    """Return the file's sha256, raising :class:`WeightsChecksumError` if it is not ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsChecksumError(
            f"weights file {path} has sha256 {actual}, expected {expected}. "
            f"The file is corrupt or not the expected weights. {how_to_fix}"
        )
    return actual


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``.pth``/``.pt``/``.bin``).

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` containers and a ``module.`` prefix.
    Torch pickles are read with ``weights_only=True``.
    """
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd: object = load_file(path, device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for container in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(container), dict):
            sd = sd[container]
    if not isinstance(sd, dict):
        kind = type(sd).__name__
        raise WeightsMismatchError(f"{path} does not contain a state dict (got {kind})")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _preview(keys: list[str], n: int = 8) -> str:
    """Short printable list of keys."""
    more = f", ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_strict(module: nn.Module, state_dict: Mapping[str, Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with a readable report of every kind of mismatch.

    Raises:
        WeightsMismatchError: listing missing keys, unexpected keys and shape mismatches.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mis_shaped:
        parts = [f"weights for {what} do not match the architecture:"]
        if missing:
            parts.append(f"{len(missing)} missing keys [{_preview(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys [{_preview(unexpected)}]")
        if mis_shaped:
            parts.append(f"{len(mis_shaped)} shape mismatches [{_preview(mis_shaped, 4)}]")
        raise WeightsMismatchError(" ".join(parts))
    module.load_state_dict(dict(state_dict), strict=True)


def user_file(backbone_name: str, weights: str | os.PathLike[str] | None) -> WeightsInfo | None:
    """Weights named by the caller or by ``SPG_WEIGHTS_<NAME>``; ``None`` if neither is set.

    Raises:
        WeightsNotFoundError: the named file does not exist.
    """
    env = env_var_for(backbone_name)
    if weights is not None:
        source, path = "file", Path(weights).expanduser()
    elif os.environ.get(env):
        source, path = "env", Path(os.environ[env]).expanduser()
    else:
        return None
    if not path.is_file():
        via = "weights argument" if source == "file" else f"environment variable {env}"
        raise WeightsNotFoundError(
            f"weights file {str(path)!r} for backbone {backbone_name!r} (from the {via}) "
            "does not exist or is not a file"
        )
    return WeightsInfo(source=source, path=str(path.resolve()), sha256=sha256_file(path))


@dataclass(frozen=True)
class HubWeights:
    """Where a model hub keeps a backbone's pretrained weights.

    Attributes:
        model: human-readable model identifier for messages, e.g. ``"timm vit_large_..."``.
        repo_id: Hugging Face repository.
        filenames: candidate files in that repository, most preferred first.
        local_files: other cache files to check (e.g. open_clip's URL cache); ``~`` is expanded
            at lookup time.
        file_hint: what kind of file the user may pass.
    """

    model: str
    repo_id: str
    filenames: tuple[str, ...]
    local_files: tuple[str, ...] = field(default_factory=tuple)
    file_hint: str = ".safetensors, .pth or .bin state dict"


def _hf_endpoint() -> str:
    """The Hugging Face endpoint in effect now (``HF_ENDPOINT`` or the default)."""
    return os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT


def _offline_requested() -> bool:
    """True when the user asked huggingface_hub to stay offline."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _probe_target(endpoint: str) -> tuple[str, int]:
    """Host and port a download would connect to first (the proxy if one is configured)."""
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(var):
            proxy = urlparse(os.environ[var])
            if proxy.hostname:
                return proxy.hostname, proxy.port or 8080
    url = urlparse(endpoint)
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def probe_hub(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Try a TCP connection to the hub (DNS included) within ``timeout`` seconds.

    Returns ``None`` when reachable, else a short reason. Runs in a daemon thread because DNS
    lookups have no timeout of their own.
    """
    host, port = _probe_target(endpoint)
    result: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as exc:
            result.append(f"{host}:{port} unreachable ({exc.__class__.__name__}: {exc})")

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return result[0] if result else f"{host}:{port} did not answer within {timeout:.0f} s"


def _hf_cached(hub: HubWeights) -> str | None:
    """Path of a hub file already in the local Hugging Face cache, without network access."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    for filename in hub.filenames:
        try:
            return hf_hub_download(hub.repo_id, filename, local_files_only=True)
        except Exception:  # not cached (LocalEntryNotFoundError and friends)
            continue
    return None


def _hf_download(hub: HubWeights, endpoint: str) -> tuple[str | None, str]:
    """Download from the hub; returns ``(path or None, reason for failure)``."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None, "huggingface_hub is not installed"
    reason = ""
    for filename in hub.filenames:
        try:
            return hf_hub_download(hub.repo_id, filename, endpoint=endpoint, etag_timeout=10), ""
        except Exception as exc:  # missing file, auth, network: try the next candidate
            reason = f"download of {hub.repo_id}/{filename} failed ({exc.__class__.__name__})"
    return None, reason


def missing_weights_message(backbone_name: str, hub: HubWeights, tried: list[str]) -> str:
    """The :class:`WeightsNotFoundError` text: what is missing and every way to provide it."""
    env = env_var_for(backbone_name)
    files = " or ".join(hub.filenames)
    return (
        f"No pretrained weights found for backbone {backbone_name!r} ({hub.model}; "
        f"Hugging Face repo {hub.repo_id}, file {files}).\n"
        "Provide them in one of these ways:\n"
        f"  1. pass a local file ({hub.file_hint}; loaded strictly): `python -m spg run "
        f"--backbone {backbone_name} --weights /path/to/file`, `papermill ... -p weights "
        f"/path/to/file`, or build_backbone({backbone_name!r}, weights='/path/to/file');\n"
        f"  2. set the environment variable {env}=/path/to/file;\n"
        f"  3. put the file in the local Hugging Face cache (on a machine with network: "
        f"`hf download {hub.repo_id} {hub.filenames[0]}`, then copy the cache; see HF_HOME / "
        "HF_HUB_CACHE), or allow network access to the hub so that it is downloaded on first "
        "use.\n"
        f"Tried: {'; '.join(tried)}.\n"
        "(For shape checks only, random_weights=True builds the architecture with random weights.)"
    )


def resolve_hub_weights(
    backbone_name: str, weights: str | os.PathLike[str] | None, hub: HubWeights
) -> WeightsInfo:
    """Find a weights file for a hub-hosted backbone (order in the module docstring).

    Raises:
        WeightsNotFoundError: nothing found; raised without a chained traceback.
    """
    explicit = user_file(backbone_name, weights)
    if explicit is not None:
        return explicit
    tried = [f"{env_var_for(backbone_name)} not set"]
    cached = _hf_cached(hub)
    if cached:
        return WeightsInfo("hf-cache", cached, sha256_file(cached), hub.repo_id)
    tried.append("not in the local Hugging Face cache")
    for local in hub.local_files:
        path = Path(local).expanduser()
        if path.is_file():
            return WeightsInfo("url-cache", str(path), sha256_file(path), hub.repo_id)
        tried.append(f"no {path}")
    endpoint = _hf_endpoint()
    reason = "HF_HUB_OFFLINE is set" if _offline_requested() else probe_hub(endpoint)
    if reason is None:
        downloaded, reason = _hf_download(hub, endpoint)
        if downloaded:
            return WeightsInfo("hf-download", downloaded, sha256_file(downloaded), hub.repo_id)
    tried.append(f"no download from {endpoint}: {reason}")
    raise WeightsNotFoundError(missing_weights_message(backbone_name, hub, tried)) from None
