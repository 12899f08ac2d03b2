"""Peak resident memory of SAE training streaming from a token cache, in a fresh process.

``python -m spg.bench.memory FOLDER [--n-atoms C --k K --token-fraction F --epochs E]`` trains the
SAE on the patch tokens of the cache in ``FOLDER`` exactly as ``spg.pipeline.train_sae_stage``
feeds it (``TokenStore.iter_patch_tokens``) and prints one JSON line: the process's peak RSS
before and after training, the cache size, and the time. A child process is used so that the peak
belongs to the training alone, not to whatever the benchmark did before.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .timing import peak_rss_mb


def measure(folder: Path, n_atoms: int, k: int, token_fraction: float, epochs: int, batch_images: int) -> dict[str, Any]:
    """Train in this process and return the memory figures (call from a fresh process)."""
    import torch  # noqa: F401  (count torch's own footprint in the baseline)

    from ..features import TokenStore
    from ..sae import SAEConfig, train_sae

    store = TokenStore(folder)
    baseline = peak_rss_mb()
    cfg = SAEConfig(n_atoms=n_atoms, k=k, epochs=epochs, batch_images=batch_images, token_fraction=token_fraction)
    t0 = time.perf_counter()
    batches = lambda e: store.iter_patch_tokens(cfg.batch_images, shuffle_seed=e, token_fraction=token_fraction)  # noqa: E731
    train_sae(batches, store.dim, cfg, progress=False)
    cache_mb = sum(f.stat().st_size for f in Path(folder).glob("*.npy")) / 2**20
    return {
        "cache_mb": cache_mb, "patches_mb": (Path(folder) / "patches.npy").stat().st_size / 2**20,
        "images": len(store), "baseline_peak_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(),
        "train_s": time.perf_counter() - t0, "sae": {"n_atoms": n_atoms, "k": k, "token_fraction": token_fraction,
                                                     "epochs": epochs, "batch_images": batch_images},
    }


def measure_in_subprocess(folder: Path, *, n_atoms: int, k: int, token_fraction: float, epochs: int = 1,
                          batch_images: int = 16, timeout: float = 3600) -> dict[str, Any]:
    """Run :func:`measure` in a child Python and return its JSON."""
    cmd = [sys.executable, "-m", "spg.bench.memory", str(folder), "--n-atoms", str(n_atoms), "--k", str(k),
           "--token-fraction", str(token_fraction), "--epochs", str(epochs), "--batch-images", str(batch_images)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory benchmark failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spg.bench.memory", description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--n-atoms", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--token-fraction", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-images", type=int, default=16)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.folder, args.n_atoms, args.k, args.token_fraction, args.epochs, args.batch_images)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
