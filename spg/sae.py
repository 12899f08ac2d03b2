"""Stage (i): the TopK sparse autoencoder of SPG (SPG_METHOD.md §3).

``z = relu(topk_k(W_enc x))`` and ``x_hat = z D`` with unit-norm atoms (the rows of ``D``) and no
biases anywhere. Decoding never multiplies by the whole dictionary: the ``k`` active atoms of each
token are gathered and summed with ``embedding_bag`` (cost ``k*d`` per token instead of ``C*d``).
Training computes its gradients the same way (:class:`SAETrainer`): the encoder product
``x @ W_enc.T`` is the only dense ``C*d``-per-token work of a step. The model here is pure torch;
training glue (batches from the feature cache, Adam, dead-latent bookkeeping) lives in
:func:`train_sae`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import from_dict, to_dict

SAE_SCHEMA_VERSION = 1
CHECKPOINT_NAME = "sae"
WEIGHTS_FILE = f"{CHECKPOINT_NAME}.safetensors"
CONFIG_FILE = f"{CHECKPOINT_NAME}.json"


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
        """Project the atoms back to unit norm (after every optimiser step), in place; the same
        numbers as ``F.normalize`` (division by the norm clamped at 1e-12)."""
        norms = torch.linalg.vector_norm(self.dictionary, dim=1, keepdim=True).clamp_min_(1e-12)
        self.dictionary.div_(norms)


@dataclass
class SAEStepStats:
    mse: float
    aux: float
    n_dead: int


def _normalize_backward(unit: torch.Tensor, norms: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. ``D`` of ``unit = D / max(|D|, 1e-12)`` (rows) given ``grad`` w.r.t. ``unit``:
    ``(grad - unit <unit, grad>) / |D|``, and ``grad / 1e-12`` for rows whose norm is below the clamp
    (as autograd differentiates ``F.normalize``)."""
    clamped = norms.clamp_min(1e-12)
    radial = (unit * grad).sum(1, keepdim=True).masked_fill_(norms < 1e-12, 0)
    return grad.addcmul(unit, radial, value=-1).div_(clamped)


def make_adam(params: list[torch.nn.Parameter], **kwargs: Any) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch has it for the parameters' device (the same
    update rule in one pass per tensor instead of ~7; results agree to float rounding), else the
    default implementation."""
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, **kwargs)


class AtomIncidence:
    """Which (token, slot) pairs of a ``[N, k]`` index matrix point at each atom, grouped by atom.

    Built once per step with one stable sort; :meth:`scatter_rows` then computes
    ``out[c] = sum over (n, j) with indices[n, j] == c of weights[n, j] * rows[n]`` (``[C, d]``) as an
    ``embedding_bag`` over per-atom bags of token rows: ``k*d`` multiply-adds per token instead of
    the ``C*d`` of the dense product ``scatter(weights)^T @ rows``.
    """

    def __init__(self, indices: torch.Tensor, n_atoms: int) -> None:
        flat = indices.reshape(-1)
        if flat.device.type == "cpu" and n_atoms <= 1 << 16:
            # numpy's stable sort of 16-bit keys is a radix sort: ~20x faster than torch.argsort here
            keys = flat.numpy().astype(np.uint16)
            order_np = np.argsort(keys, kind="stable")
            order = torch.from_numpy(order_np)
            counts = torch.from_numpy(np.bincount(keys, minlength=n_atoms))
            tokens = torch.from_numpy(order_np // indices.shape[1])
        else:
            order = torch.argsort(flat, stable=True)
            counts = torch.bincount(flat, minlength=n_atoms)
            tokens = torch.div(order, indices.shape[1], rounding_mode="floor")
        self.order, self.tokens = order, tokens
        self.offsets = counts.cumsum(0) - counts

    def scatter_rows(self, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``scatter(weights [N, k] at indices)^T @ rows [N, d]`` -> ``[C, d]``, sparsely."""
        w = weights.reshape(-1)[self.order]
        return F.embedding_bag(self.tokens, rows, self.offsets, per_sample_weights=w, mode="sum")


def gather_dot(rows: torch.Tensor, indices: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``out[n, j] = <rows[n], table[indices[n, j]]>`` (``[N, k]``) without the dense ``rows @ table.T``.

    A sampled dense-dense product over the ``k`` sampled columns of each row (CSR pattern).
    """
    n, k = indices.shape
    crow = torch.arange(0, n * k + 1, k, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(crow, indices.reshape(-1), rows.new_zeros(n * k), size=(n, table.shape[0]))
        return torch.sparse.sampled_addmm(pattern, rows, table.T, beta=0.0).values().view(n, k)


class SAETrainer:
    """Adam on the SAE with AuxK and dead-latent tracking (one object per training run).

    The gradients are computed by hand (:meth:`backward`), sparsely: only the ``k`` selected
    pre-activations of each token have a non-zero gradient, so the encoder gradient is a sparse
    ``[C, N] @ [N, d]`` product and the decoder's one a scatter of ``k`` rows per token; the only
    dense ``[N, C]`` work of a step is the encoder product ``x @ W_enc.T`` and its top-k. The result
    equals autograd's gradient of ``mse + aux_coef * aux`` (tests/test_bench.py checks it against the
    dense autograd reference in :mod:`spg.bench`).
    """

    def __init__(self, sae: TopKSAE, cfg: SAEConfig) -> None:
        self.sae, self.cfg = sae, cfg
        self.opt = make_adam(list(sae.parameters()), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.tokens_since_fired = torch.zeros(sae.n_atoms, dtype=torch.long)

    def dead_latents(self) -> torch.Tensor:
        """Indices of the latents that have not fired for ``dead_after_tokens`` tokens."""
        return torch.nonzero(self.tokens_since_fired >= self.cfg.dead_after_tokens).squeeze(1)

    def auxk_loss(self, pre: torch.Tensor, residual: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        """MSE of the residual reconstructed by the top ``aux_k`` dead pre-activations (differentiable
        reference form; :meth:`backward` computes the same loss and its gradient directly)."""
        dead = self.dead_latents()
        if dead.numel() == 0:
            return pre.new_zeros(())
        values, idx = pre.index_select(1, dead).topk(min(self.cfg.aux_k, dead.numel()), dim=1)
        recon = TopKSAE.decode(values.clamp_min(0), dead[idx], atoms)
        return (recon - residual).pow(2).mean()

    @torch.no_grad()
    def backward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Set ``.grad`` of the encoder and the dictionary to d(mse + aux_coef * aux) and update the
        dead-latent counters; returns ``(mse, aux)``."""
        sae, cfg = self.sae, self.cfg
        n, d = x.shape
        norms = torch.linalg.vector_norm(sae.dictionary, dim=1, keepdim=True)
        atoms = sae.dictionary / norms.clamp_min(1e-12)  # = sae.atoms()
        pre = x @ sae.encoder.T
        pre_values, indices = pre.topk(sae.k, dim=1)
        values = pre_values.clamp_min(0)
        x_hat = TopKSAE.decode(values, indices, atoms)
        diff = x_hat.sub_(x)  # x_hat - x, in place
        flat = diff.view(-1)
        mse = torch.dot(flat, flat) / flat.numel()
        self._track_firing(values, indices, n)
        scale = 2.0 / (n * d)  # d mse / d x_hat = scale * diff; applied to the [N, k] weights, not to diff
        incidence = AtomIncidence(indices, sae.n_atoms)
        g_atoms = incidence.scatter_rows(values * scale, diff)
        g_pre = gather_dot(diff, indices, atoms).mul_(scale).masked_fill_(pre_values < 0, 0)  # clamp_min: grad at >= 0
        g_enc = incidence.scatter_rows(g_pre, x)
        aux = self._auxk_backward(pre, x, diff, atoms, g_atoms, g_enc)
        sae.encoder.grad = g_enc
        sae.dictionary.grad = _normalize_backward(atoms, norms, g_atoms)
        return mse, aux

    def _auxk_backward(
        self, pre: torch.Tensor, x: torch.Tensor, diff: torch.Tensor, atoms: torch.Tensor,
        g_atoms: torch.Tensor, g_enc: torch.Tensor,
    ) -> torch.Tensor:
        """AuxK loss; adds its gradient into ``g_atoms`` / ``g_enc`` (``diff = x_hat - x``). Works on the dead columns only,
        densely (``aux_k`` is a large share of the dead latents, where dense products are fastest)."""
        dead = self.dead_latents()
        if dead.numel() == 0:
            return pre.new_zeros(())
        n, d = x.shape
        pre_dead = pre.index_select(1, dead)
        n_aux = min(self.cfg.aux_k, dead.numel())
        if n_aux < dead.numel():  # the order of the selected latents does not matter here
            pre_values, idx = pre_dead.topk(n_aux, dim=1, sorted=False)
            z = torch.zeros_like(pre_dead).scatter_(1, idx, pre_values.clamp_min(0))
            negative = torch.ones_like(pre_dead, dtype=torch.bool).scatter_(1, idx, pre_values < 0)
        else:  # every dead latent is selected: no top-k needed
            z, negative = pre_dead.clamp_min(0), pre_dead < 0
        atoms_dead = atoms.index_select(0, dead)
        err = (z @ atoms_dead).add_(diff)  # recon - (x - stopgrad(x_hat)), diff = x_hat - x
        aux = err.pow(2).mean()
        g_recon = err.mul_(self.cfg.aux_coef * 2.0 / (n * d))
        g_atoms.index_add_(0, dead, z.T @ g_recon)
        g_pre = (g_recon @ atoms_dead.T).masked_fill_(negative, 0)  # unselected or clamped: no gradient
        g_enc.index_add_(0, dead, g_pre.T @ x)
        return aux

    def step(self, x: torch.Tensor) -> SAEStepStats:
        mse, aux = self.backward(x)
        self.opt.step()
        self.sae.renormalise()
        n_dead = int((self.tokens_since_fired >= self.cfg.dead_after_tokens).sum())
        return SAEStepStats(mse.item(), aux.item(), n_dead)

    def _track_firing(self, values: torch.Tensor, indices: torch.Tensor, n_tokens: int) -> None:
        """Count ``n_tokens`` more tokens for every latent, then reset those that fired."""
        fired = indices.masked_select(values > self.cfg.fire_threshold)
        self.tokens_since_fired.add_(n_tokens).index_fill_(0, fired, 0)


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
    tensors = {"encoder": sae.encoder, "dictionary": sae.atoms(), "alive": sae.alive.to(torch.uint8)}
    meta = {"d_in": sae.d_in, "config": to_dict(cfg), **(extra or {})}
    save_checkpoint(folder, CHECKPOINT_NAME, tensors, meta, SAE_SCHEMA_VERSION)


def load_sae(folder: Path) -> tuple[TopKSAE, SAEConfig]:
    """Load what :func:`save_sae` wrote; refuse other schema versions with a clear message."""
    meta, tensors = load_checkpoint(folder, CHECKPOINT_NAME, SAE_SCHEMA_VERSION, "SAE")
    cfg = from_dict(SAEConfig, meta["config"])
    sae = TopKSAE(meta["d_in"], cfg.n_atoms, cfg.k, seed=cfg.seed)
    with torch.no_grad():
        sae.encoder.copy_(tensors["encoder"])
        sae.dictionary.copy_(tensors["dictionary"])
        sae.alive.copy_(tensors["alive"].bool())
    return sae, cfg
