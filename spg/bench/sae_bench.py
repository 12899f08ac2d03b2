"""SAE training throughput: the real step against a plain matmul and against a naive dense step.

FLOP accounting (:func:`sae_step_flops`): a TopK SAE step is counted as ``4 * C * d`` FLOP per
token, the two dense products a straightforward implementation cannot avoid, the encoder
``x @ W_enc.T`` (``2 C d``) and its gradient ``dL/dpre.T @ x`` (``2 C d``). The machine's matmul
rate is measured at the same shape, ``[N, d] @ [d, C]``, so "achieved GFLOP/s / matmul GFLOP/s"
says how close the step comes to two big matmuls. The sparse decode and the sparse encoder
gradient of :class:`spg.sae.SAETrainer` do less arithmetic than counted, so the ratio can exceed 1.

:class:`NaiveSAETrainer` is the reference: the same loss (MSE + AuxK) with a dense decode
``z @ D`` over all C atoms and autograd for every gradient, written as one usually would.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from ..sae import SAEConfig, SAETrainer, TopKSAE
from .timing import interleaved, paired_ratio


def sae_step_flops(n_tokens: int, d: int, n_atoms: int) -> int:
    """FLOP counted for one SAE step: ``4 * C * d`` per token (encoder product + its gradient)."""
    return 4 * n_atoms * d * n_tokens


def matmul_flops(n: int, d: int, c: int) -> int:
    """FLOP of ``[n, d] @ [d, c]``: one multiply and one add per term."""
    return 2 * n * d * c


class NaiveSAETrainer(SAETrainer):
    """The SAE step written naively: dense code ``z [N, C]``, dense decode ``z @ D``, autograd.

    Same loss, same optimiser, same dead-latent bookkeeping as :class:`SAETrainer`; only the way the
    loss and its gradients are computed differs (tests/test_bench.py checks they agree).
    """

    def backward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sae, cfg = self.sae, self.cfg
        self.opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            pre = x @ sae.encoder.T
            values, indices = pre.topk(sae.k, dim=1)
            values = values.clamp_min(0)
            z = torch.zeros_like(pre).scatter(1, indices, values)
            atoms = sae.atoms()
            x_hat = z @ atoms
            mse = (x_hat - x).pow(2).mean()
            self._track_firing(values.detach(), indices, x.shape[0])
            aux = self._dense_auxk(pre, x - x_hat.detach(), atoms)
            (mse + cfg.aux_coef * aux).backward()
        return mse.detach(), aux.detach()

    def _dense_auxk(self, pre: torch.Tensor, residual: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        """AuxK with a dense code over all C atoms (non-dead columns masked to -inf)."""
        dead = self.dead_latents()
        if dead.numel() == 0:
            return pre.new_zeros(())
        masked = torch.full_like(pre, -torch.inf).index_copy(1, dead, pre.index_select(1, dead))
        values, indices = masked.topk(min(self.cfg.aux_k, dead.numel()), dim=1)
        z = torch.zeros_like(pre).scatter(1, indices, values.clamp_min(0))
        return (z @ atoms - residual).pow(2).mean()


def make_trainers(d: int, cfg: SAEConfig, n_dead: int = 0) -> tuple[SAETrainer, NaiveSAETrainer]:
    """A real and a naive trainer on identical copies of one SAE; ``n_dead`` latents start dead."""
    sae = TopKSAE(d, cfg.n_atoms, cfg.k, seed=cfg.seed)
    if n_dead:  # shrink their encoder rows so they never reach the top k (and stay dead)
        with torch.no_grad():
            sae.encoder[-n_dead:] *= 0.01
    fast, naive = SAETrainer(sae, cfg), NaiveSAETrainer(copy.deepcopy(sae), cfg)
    if n_dead:
        for trainer in (fast, naive):
            trainer.tokens_since_fired[-n_dead:] = cfg.dead_after_tokens
    return fast, naive


def token_batch(n_tokens: int, d: int, seed: int = 0) -> torch.Tensor:
    """A fixed batch of ``[n_tokens, d]`` float32 tokens: normal, with a shared mean direction."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n_tokens, d, generator=gen) + torch.randn(1, d, generator=gen)


def bench_sae_step(
    n_tokens: int, d: int, n_atoms: int, k: int, repeats: int, *, aux_dead: int = 0, with_naive: bool = True
) -> dict[str, Any]:
    """Median seconds of the real step, the naive step and the ``[N, d] @ [d, C]`` matmul,
    interleaved; tokens/s and GFLOP/s of each, and the ratios the targets are stated in (medians
    of the per-repeat ratios).

    ``aux_dead > 0`` marks the last ``aux_dead`` latents dead before every timed step (in both
    trainers alike), to time the step with the AuxK term active.
    """
    cfg = SAEConfig(n_atoms=n_atoms, k=k, dead_after_tokens=10**12 if not aux_dead else 10**6)
    fast, naive = make_trainers(d, cfg, aux_dead)
    x = token_batch(n_tokens, d)
    weight = F.normalize(torch.randn(n_atoms, d), dim=1)

    def step(trainer: SAETrainer):
        def run():
            if aux_dead:
                trainer.tokens_since_fired[-aux_dead:] = cfg.dead_after_tokens
            return trainer.step(x)
        return run

    contenders = {"matmul": lambda: x @ weight.T, "fast": step(fast)}
    if with_naive:
        contenders["naive"] = step(naive)
    t = interleaved(contenders, repeats)
    flops = sae_step_flops(n_tokens, d, n_atoms)
    out: dict[str, Any] = {
        "shape": {"tokens": n_tokens, "d": d, "n_atoms": n_atoms, "k": k, "dead_latents": aux_dead},
        "flop_per_token": 4 * n_atoms * d,
        "timings": {name: tm.to_dict() for name, tm in t.items()},
        "matmul_gflops": matmul_flops(n_tokens, d, n_atoms) / t["matmul"].median / 1e9,
        "fast_tokens_s": n_tokens / t["fast"].median,
        "fast_gflops": flops / t["fast"].median / 1e9,
    }
    # achieved / matmul GFLOP/s = (flops / t_fast) / (matmul flops / t_matmul), per repeat
    out["fast_vs_matmul"] = paired_ratio(t["matmul"], t["fast"]) * flops / matmul_flops(n_tokens, d, n_atoms)
    if with_naive:
        out["naive_tokens_s"] = n_tokens / t["naive"].median
        out["naive_gflops"] = flops / t["naive"].median / 1e9
        out["speedup_vs_naive"] = paired_ratio(t["naive"], t["fast"])
    return out
