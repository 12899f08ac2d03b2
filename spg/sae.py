"""Stage (i): the TopK sparse autoencoder of SPG (SPG_METHOD.md §3).

``z = relu(topk_k(W_enc x))`` and ``x_hat = z D`` with unit-norm atoms (the rows of ``D``) and no
biases anywhere. Decoding never multiplies by the whole dictionary: the ``k`` active atoms of each
token are gathered and summed with ``embedding_bag`` (cost ``k*d`` per token instead of ``C*d``).
The model here is pure torch; training glue (batches from the feature cache, Adam, dead-latent
bookkeeping) lives in :func:`train_sae`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .config import from_dict, to_dict

SAE_SCHEMA_VERSION = 1
WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "sae.json"


@dataclass(frozen=True)
class SAEConfig:
    """Hyper-parameters of the TopK SAE and of its training (defaults: the paper's settings)."""

    n_atoms: int = 4096
    """C, the number of dictionary atoms."""
    k: int = 32
    """Active latents per token (TopK)."""
    aux_k: int = 512
    """AuxK: how many dead latents reconstruct the residual."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_after_tokens: int = 10_000_000
    """A latent that has not fired for this many training tokens counts as dead for AuxK."""
    fire_threshold: float = 1e-3
    """An activation above this value counts as firing (dead-latent tracking and the dead mask)."""
    lr: float = 1e-3
    """Adam learning rate."""
    beta1: float = 0.5
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    batch_images: int = 16
    """Images per step; every patch token of these images forms the batch."""
    epochs: int = 50
    """Passes over the auxiliary tokens."""
    token_fraction: float = 1.0
    """Share of each image's patch tokens used per epoch, drawn at random (1.0, the paper: all).
    Below 1 it trades SAE quality for CPU time; the dead mask is always computed on all tokens."""
    seed: int = 0
    """Seed of the initialisation and of the image order."""


class TopKSAE(torch.nn.Module):
    """Bias-free TopK SAE with unit-norm atoms and a tied (copied) encoder initialisation."""

    def __init__(self, d_in: int, n_atoms: int, k: int, *, seed: int = 0) -> None:
        super().__init__()
        if not 0 < k <= n_atoms:
            raise ValueError(f"k must be in [1, n_atoms={n_atoms}], got {k}")
        gen = torch.Generator().manual_seed(seed)
        atoms = F.normalize(torch.randn(n_atoms, d_in, generator=gen), dim=1)
        self.d_in, self.n_atoms, self.k = d_in, n_atoms, k
        self.dictionary = torch.nn.Parameter(atoms.clone())
        self.encoder = torch.nn.Parameter(atoms.clone())
        self.register_buffer("alive", torch.ones(n_atoms, dtype=torch.bool))

    def atoms(self) -> torch.Tensor:
        """The dictionary with unit-norm rows ``[C, d]`` (normalised in the forward pass)."""
        return F.normalize(self.dictionary, dim=1)

    def preactivations(self, x: torch.Tensor) -> torch.Tensor:
        """``W_enc x`` for tokens ``x [N, d]`` -> ``[N, C]``."""
        return x @ self.encoder.T

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse code of ``x [N, d]``: ``(values [N, k] >= 0, indices [N, k])``."""
        values, indices = self.preactivations(x).topk(self.k, dim=1)
        return values.clamp_min(0), indices

    def encode_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The code as a dense ``[N, C]`` matrix (for analysis; training never builds it)."""
        values, indices = self.encode(x)
        return torch.zeros(x.shape[0], self.n_atoms, dtype=x.dtype).scatter_(1, indices, values)

    @staticmethod
    def decode(values: torch.Tensor, indices: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        """``sum_j values[:, j] * atoms[indices[:, j]]`` without touching inactive atoms."""
        return F.embedding_bag(indices, atoms, per_sample_weights=values, mode="sum")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = self.encode(x)
        return self.decode(values, indices, self.atoms())

    @torch.no_grad()
    def renormalise(self) -> None:
        """Project the atoms back to unit norm (after every optimiser step)."""
        self.dictionary.copy_(F.normalize(self.dictionary, dim=1))


@dataclass
class SAEStepStats:
    mse: float
    aux: float
    n_dead: int


class SAETrainer:
    """Adam on the SAE with AuxK and dead-latent tracking (one object per training run)."""

    def __init__(self, sae: TopKSAE, cfg: SAEConfig) -> None:
        self.sae, self.cfg = sae, cfg
        self.opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.tokens_since_fired = torch.zeros(sae.n_atoms, dtype=torch.long)

    def auxk_loss(self, pre: torch.Tensor, residual: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        """MSE of the residual reconstructed by the top ``aux_k`` dead pre-activations."""
        dead = torch.nonzero(self.tokens_since_fired >= self.cfg.dead_after_tokens).squeeze(1)
        if dead.numel() == 0:
            return pre.new_zeros(())
        values, idx = pre.index_select(1, dead).topk(min(self.cfg.aux_k, dead.numel()), dim=1)
        recon = TopKSAE.decode(values.clamp_min(0), dead[idx], atoms)
        return (recon - residual).pow(2).mean()

    def step(self, x: torch.Tensor) -> SAEStepStats:
        sae, cfg = self.sae, self.cfg
        pre = sae.preactivations(x)
        values, indices = pre.topk(sae.k, dim=1)
        values = values.clamp_min(0)
        atoms = sae.atoms()
        x_hat = TopKSAE.decode(values, indices, atoms)
        mse = (x_hat - x).pow(2).mean()
        self._track_firing(values.detach(), indices, x.shape[0])
        aux = self.auxk_loss(pre, x - x_hat.detach(), atoms)
        loss = mse + cfg.aux_coef * aux
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        sae.renormalise()
        n_dead = int((self.tokens_since_fired >= cfg.dead_after_tokens).sum())
        return SAEStepStats(mse.item(), aux.item(), n_dead)

    def _track_firing(self, values: torch.Tensor, indices: torch.Tensor, n_tokens: int) -> None:
        fired = torch.zeros(self.sae.n_atoms, dtype=torch.bool)
        fired[indices[values > self.cfg.fire_threshold]] = True
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0


def train_sae(
    batches: Callable[[int], Iterable[torch.Tensor]],
    d_in: int,
    cfg: SAEConfig,
    *,
    progress: bool = True,
) -> tuple[TopKSAE, list[dict[str, float]]]:
    """Train a TopK SAE.

    ``batches`` is a callable ``epoch -> iterable of [N, d] float32 token batches`` (a fresh,
    seeded order each epoch). Returns the SAE (dead-atom mask not yet set: see
    :func:`compute_alive`) and a per-epoch history of reconstruction MSE, AuxK loss and dead latents.
    """
    torch.manual_seed(cfg.seed)
    sae = TopKSAE(d_in, cfg.n_atoms, cfg.k, seed=cfg.seed)
    trainer = SAETrainer(sae, cfg)
    history: list[dict[str, float]] = []
    bar = tqdm(range(cfg.epochs), desc="SAE epochs", disable=not progress)
    for epoch in bar:
        sums = np.zeros(3)
        n = 0
        for x in batches(epoch):
            stats = trainer.step(x)
            sums += (stats.mse, stats.aux, stats.n_dead)
            n += 1
        mse, aux, n_dead = sums / max(n, 1)
        history.append({"epoch": epoch, "mse": mse, "aux": aux, "dead_latents": n_dead})
        bar.set_postfix(mse=f"{mse:.4g}", dead=int(n_dead))
    return sae, history


@torch.no_grad()
def firing_counts(sae: TopKSAE, batches: Iterable[torch.Tensor], threshold: float) -> torch.Tensor:
    """How many tokens each atom fires on (activation > ``threshold``) over ``batches``."""
    counts = torch.zeros(sae.n_atoms, dtype=torch.long)
    for x in batches:
        values, indices = sae.encode(x)
        counts += torch.bincount(indices[values > threshold], minlength=sae.n_atoms)
    return counts


@torch.no_grad()
def reconstruction_stats(sae: TopKSAE, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """Explained variance, MSE and mean L0 of the SAE over ``batches``."""
    sq_err = sq_tot = l0 = 0.0
    n = 0
    sum_x = sum_x2 = None
    for x in batches:
        values, indices = sae.encode(x)
        x_hat = sae.decode(values, indices, sae.atoms())
        sq_err += float((x_hat - x).pow(2).sum())
        l0 += float((values > 0).sum())
        sum_x = x.sum(0) if sum_x is None else sum_x + x.sum(0)
        sum_x2 = x.pow(2).sum(0) if sum_x2 is None else sum_x2 + x.pow(2).sum(0)
        n += x.shape[0]
    sq_tot = float((sum_x2 - sum_x.pow(2) / n).sum())
    return {
        "mse": sq_err / (n * sae.d_in),
        "explained_variance": 1.0 - sq_err / sq_tot if sq_tot > 0 else math.nan,
        "l0": l0 / n,
        "tokens": n,
    }


def save_sae(sae: TopKSAE, cfg: SAEConfig, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``sae.safetensors`` (encoder, dictionary, alive mask) and ``sae.json`` (schema, config)."""
    folder = Path(folder)
    tensors = {
        "encoder": sae.encoder.detach().contiguous(),
        "dictionary": sae.atoms().detach().contiguous(),
        "alive": sae.alive.to(torch.uint8),
    }
    save_file(tensors, str(folder / WEIGHTS_FILE))
    meta = {"schema_version": SAE_SCHEMA_VERSION, "d_in": sae.d_in, "config": to_dict(cfg), **(extra or {})}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_sae(folder: Path) -> tuple[TopKSAE, SAEConfig]:
    """Load what :func:`save_sae` wrote; refuse other schema versions with a clear message."""
    folder = Path(folder)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    if meta.get("schema_version") != SAE_SCHEMA_VERSION:
        raise ValueError(
            f"{folder / CONFIG_FILE}: SAE schema version {meta.get('schema_version')} is not the "
            f"supported version {SAE_SCHEMA_VERSION}; retrain the SAE (delete this cache folder)."
        )
    cfg = from_dict(SAEConfig, meta["config"])
    tensors = load_file(str(folder / WEIGHTS_FILE))
    sae = TopKSAE(meta["d_in"], cfg.n_atoms, cfg.k, seed=cfg.seed)
    with torch.no_grad():
        sae.encoder.copy_(tensors["encoder"])
        sae.dictionary.copy_(tensors["dictionary"])
        sae.alive.copy_(tensors["alive"].bool())
    return sae, cfg
