"""Stage (ii): sparse-projected guides (SPG_METHOD.md §4).

Four guide vectors are non-negative combinations of the frozen SAE dictionary, ``g = relu(Theta) D``:
0 global-normal, 1 global-anomaly (against the global token), 2 local-normal, 3 local-anomaly
(against every patch token). This module holds the pure-torch head, its losses, inference
(maps, blur, image scores) and save/load; the training loop is :func:`train_guides`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ConfigError, from_dict, to_dict

GUIDE_SCHEMA_VERSION = 1
CHECKPOINT_NAME = "guides"
WEIGHTS_FILE = f"{CHECKPOINT_NAME}.safetensors"
CONFIG_FILE = f"{CHECKPOINT_NAME}.json"
GUIDE_NAMES = ("global_normal", "global_anomaly", "local_normal", "local_anomaly")
SPARSITY_MODES = ("l1", "topn")
IMAGE_SCORES = ("max", "global", "lse", "top10_mean", "hybrid")


@dataclass(frozen=True)
class GuideConfig:
    """Hyper-parameters of the guide coefficients and their training (defaults: the paper's)."""

    tau: float = 0.07
    """Softmax temperature of the patch probabilities and of the global head's score."""
    sparsity: str = "l1"
    """``l1`` (L1 penalty on the coefficients) or ``topn`` (straight-through top-n per guide)."""
    l1_coef: float = 1e-3
    """Weight of the L1 term: ``l1_coef * mean over guides of ||c||_1`` (``l1`` mode only)."""
    top_n: int = 64
    """Coefficients kept per guide in ``topn`` mode."""
    init_mean: float = 0.1
    """``Theta`` is initialised as ``init_mean + init_std * N(0, 1)``."""
    init_std: float = 0.01
    """See ``init_mean``."""
    lr: float = 0.01
    """Adam learning rate."""
    beta1: float = 0.5
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    batch_images: int = 8
    """Images per step."""
    epochs: int = 15
    """Passes over the auxiliary images."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of ``Theta``; the EMA is the evaluated model."""
    ema_warmup: bool = True
    """Use ``min(ema_decay, (1 + t) / (10 + t))`` at step t, so short runs are not dominated by the
    initialisation (the spec is silent on warm-up; with thousands of steps it makes no difference)."""
    seed: int = 0
    """Seed of the initialisation and the image order."""

    def __post_init__(self) -> None:
        if self.sparsity not in SPARSITY_MODES:
            raise ConfigError(f"sparsity must be one of {SPARSITY_MODES}, got {self.sparsity!r}")


def cosine(tokens: torch.Tensor, guides: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of tokens ``[..., d]`` with guides ``[G, d]`` -> ``[..., G]``."""
    return F.normalize(tokens, dim=-1) @ F.normalize(guides, dim=-1).T


class SPGHead(torch.nn.Module):
    """Guide coefficients over a frozen, unit-norm dictionary (the only trainable tensor: ``theta``)."""

    def __init__(
        self,
        atoms: torch.Tensor,
        alive: torch.Tensor,
        *,
        tau: float = 0.07,
        sparsity: str = "l1",
        top_n: int = 64,
        theta: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("atoms", F.normalize(atoms.detach().float(), dim=1))
        self.register_buffer("alive", alive.detach().bool())
        self.tau, self.sparsity, self.top_n = tau, sparsity, top_n
        n_atoms = atoms.shape[0]
        self.theta = torch.nn.Parameter(theta.clone() if theta is not None else torch.zeros(4, n_atoms))

    def coefficients(self) -> torch.Tensor:
        """``c = relu(theta)`` with dead atoms zeroed; top-n per guide (straight-through) in ``topn`` mode."""
        c = F.relu(self.theta) * self.alive
        if self.sparsity == "topn" and self.top_n < c.shape[1]:
            keep = torch.zeros_like(c).scatter_(1, c.topk(self.top_n, dim=1).indices, 1.0)
            c = c + (c * keep - c).detach()
        return c

    def sparsity_penalty(self) -> torch.Tensor:
        """Mean over the four guides of the L1 norm of their coefficients."""
        return self.coefficients().sum(1).mean()

    def guides(self) -> torch.Tensor:
        """The four guide vectors ``[4, d]``."""
        return self.coefficients() @ self.atoms

    def global_cosines(self, global_tokens: torch.Tensor) -> torch.Tensor:
        """``[cos(x_0, g_0), cos(x_0, g_1)]`` for global tokens ``[B, d]`` -> ``[B, 2]``."""
        return cosine(global_tokens, self.guides()[0:2])

    def global_score(self, global_tokens: torch.Tensor) -> torch.Tensor:
        """Anomaly probability from the global head: ``softmax(cos / tau)[:, 1]``."""
        return torch.softmax(self.global_cosines(global_tokens) / self.tau, dim=1)[:, 1]

    def patch_probabilities(self, patches: torch.Tensor) -> torch.Tensor:
        """``softmax([cos(x_t, g_2), cos(x_t, g_3)] / tau)`` for ``[B, h, w, d]`` -> ``[B, 2, h, w]``."""
        probs = torch.softmax(cosine(patches, self.guides()[2:4]) / self.tau, dim=-1)
        return probs.permute(0, 3, 1, 2)

    def anomaly_grid(self, patches: torch.Tensor) -> torch.Tensor:
        """``S_a`` on the patch grid: ``softmax(...)[1]`` for ``[B, h, w, d]`` -> ``[B, h, w]``.

        ``softmax([c_2, c_3] / tau)[1] = sigmoid((c_3 - c_2) / tau)`` and
        ``c_3 - c_2 = <x, g_3/|g_3| - g_2/|g_2|> / |x|``: one product with a single direction and
        the token norms, instead of normalising every token and taking two cosines.
        """
        local = F.normalize(self.guides()[2:4], dim=-1)
        direction = (local[1] - local[0]) / self.tau
        norms = torch.linalg.vector_norm(patches, dim=-1).clamp_min(1e-12)  # F.normalize's eps
        return torch.sigmoid((patches @ direction) / norms)

    def anomaly_map(self, patches: torch.Tensor, size: int) -> torch.Tensor:
        """``S_a`` alone, upsampled to ``size`` -> ``[B, size, size]`` (``S_n = 1 - S_a``: bilinear
        upsampling is linear and the two probabilities sum to one).

        The bilinear upsampling (``align_corners=False``) is applied as ``U_h @ grid @ U_w.T`` with
        the interpolation matrices of :func:`resample_matrix`: the numbers of ``F.interpolate``, and
        a backward pass made of two small matrix products.
        """
        prob = self.anomaly_grid(patches)
        rows = resample_matrix(prob.shape[-2], size, 0.0).to(prob)
        cols = resample_matrix(prob.shape[-1], size, 0.0).to(prob)
        return rows @ prob @ cols.T

    def maps(self, patches: torch.Tensor, size: int) -> torch.Tensor:
        """Normal and anomaly maps ``S = [S_n, S_a]`` upsampled bilinearly to ``size`` -> ``[B, 2, size, size]``."""
        probs = self.patch_probabilities(patches)
        return F.interpolate(probs, size=(size, size), mode="bilinear", align_corners=False)


def focal_loss(anomaly: torch.Tensor, masks: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss of the 2-channel map ``[1 - S_a, S_a]`` against binary ``masks [B, H, W]``.

    With the one-hot target clamped to ``[1e-5, 1 - 1e-5]``, ``pt = sum_c onehot_c p_c + 1e-5``;
    the two channels sum to one, so only the anomaly channel ``anomaly [B, H, W]`` is needed.
    """
    t = masks.clamp(1e-5, 1 - 1e-5)
    pt = (1 - t) * (1 - anomaly) + t * anomaly + 1e-5
    return (-(1 - pt).pow(gamma) * pt.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`` per image, averaged over the batch."""
    dims = tuple(range(1, pred.dim()))
    inter = (pred * target).sum(dims)
    return (1 - (2 * inter + 1) / (pred.sum(dims) + target.sum(dims) + 1)).mean()


def dice_pair_loss(anomaly: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``Dice(S_a, M) + Dice(S_n, 1 - M)`` with ``S_n = 1 - S_a``, from one pass over the pixels.

    The normal-channel sums follow from the anomaly ones: ``sum(S_n (1-M)) = n - sum S_a - sum M +
    sum(S_a M)``, so the second Dice term costs no extra full-resolution work.
    """
    dims = tuple(range(1, anomaly.dim()))
    n = anomaly[0].numel()
    sa, sm, sam = anomaly.sum(dims), masks.sum(dims), (anomaly * masks).sum(dims)
    dice_a = 1 - (2 * sam + 1) / (sa + sm + 1)
    dice_n = 1 - (2 * (n - sa - sm + sam) + 1) / ((n - sa) + (n - sm) + 1)
    return (dice_a + dice_n).mean()


class _FocalDice(torch.autograd.Function):
    """:func:`focal_loss` and :func:`dice_pair_loss` of one anomaly map, forward and backward by hand.

    Both losses are sums of per-pixel terms and per-image sums, so their gradient with respect to
    the map has a closed form: the focal term's derivative per pixel, and for the Dice pair an
    affine function of the mask per image. Autograd through the reference formulas runs about
    three times as many full-resolution passes.
    """

    @staticmethod
    def forward(ctx: Any, anomaly: torch.Tensor, masks: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
        t = masks.clamp(1e-5, 1 - 1e-5)
        w = t * 2 - 1  # pt = (1 - t)(1 - a) + t a + 1e-5 = (1 - t + 1e-5) + a (2t - 1)
        pt = torch.addcmul(1 + 1e-5 - t, anomaly, w)
        log_pt = pt.log()
        q = 1 - pt
        focal = -(q.pow(gamma) * log_pt).mean()
        dims = tuple(range(1, anomaly.dim()))
        n = anomaly[0].numel()
        sa, sm, sam = anomaly.sum(dims), masks.sum(dims), (anomaly * masks).sum(dims)
        num_a, den_a = 2 * sam + 1, sa + sm + 1
        num_n, den_n = 2 * (n - sa - sm + sam) + 1, (n - sa) + (n - sm) + 1
        dice = (1 - num_a / den_a + 1 - num_n / den_n).mean()
        ctx.save_for_backward(w, pt, log_pt, q, masks, num_a, den_a, num_n, den_n)
        ctx.gamma = gamma
        return focal, dice

    @staticmethod
    def backward(ctx: Any, g_focal: torch.Tensor, g_dice: torch.Tensor):
        w, pt, log_pt, q, masks, num_a, den_a, num_n, den_n = ctx.saved_tensors
        gamma, b = ctx.gamma, masks.shape[0]
        # d focal / d anomaly = (2t - 1) / numel * q^(gamma-1) (gamma log pt - q / pt), q = 1 - pt
        grad = (log_pt * gamma).sub_(q / pt).mul_(q.pow(gamma - 1)).mul_(w).mul_(g_focal / pt.numel())
        # d (dice_a + dice_n) / d anomaly_p = alpha_b * m_p + beta_b (per image b)
        alpha = (-2 / den_a - 2 / den_n) * (g_dice / b)
        beta = (num_a / den_a**2 + 2 / den_n - num_n / den_n**2) * (g_dice / b)
        shape = (-1,) + (1,) * (masks.dim() - 1)
        grad.addcmul_(masks, alpha.view(shape)).add_(beta.view(shape))
        return grad, None, None


def focal_dice_losses(anomaly: torch.Tensor, masks: torch.Tensor, gamma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(focal_loss(anomaly, masks), dice_pair_loss(anomaly, masks))`` with a hand-written backward."""
    return _FocalDice.apply(anomaly, masks, gamma)


def spg_losses(
    head: SPGHead,
    global_tokens: torch.Tensor,
    patches: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    cfg: GuideConfig,
) -> dict[str, torch.Tensor]:
    """The SPG training losses (summed without weights into ``total``); masks are at input size."""
    detection = F.cross_entropy(head.global_cosines(global_tokens), labels.long())
    anomaly = head.anomaly_map(patches, masks.shape[-1])
    focal, dice = focal_dice_losses(anomaly, masks)
    losses = {"detection": detection, "focal": focal, "dice": dice}
    if cfg.sparsity == "l1":
        losses["sparsity"] = cfg.l1_coef * head.sparsity_penalty()
    losses["total"] = sum(losses.values())
    return losses


def make_head(atoms: torch.Tensor, alive: torch.Tensor, cfg: GuideConfig) -> SPGHead:
    """A head with ``theta = init_mean + init_std * N(0, 1)`` drawn from ``cfg.seed``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    theta = cfg.init_mean + cfg.init_std * torch.randn(4, atoms.shape[0], generator=gen)
    return SPGHead(atoms, alive, tau=cfg.tau, sparsity=cfg.sparsity, top_n=cfg.top_n, theta=theta)


def train_guides(
    atoms: torch.Tensor,
    alive: torch.Tensor,
    batches: Callable[[int], Iterable[dict[str, torch.Tensor]]],
    cfg: GuideConfig,
    *,
    progress: bool = True,
    head: SPGHead | None = None,
) -> tuple[SPGHead, list[dict[str, float]]]:
    """Train the guide coefficients; returns the EMA head (the evaluated model) and per-epoch losses.

    ``batches(epoch)`` yields dicts with ``global [B, d]``, ``patches [B, h, w, d]``,
    ``masks [B, S, S]`` (binary, input size) and ``labels [B]``. ``head`` replaces the default
    :func:`make_head` (baselines pass their own head; its ``theta`` is what is trained).
    """
    torch.manual_seed(cfg.seed)
    head = make_head(atoms, alive, cfg) if head is None else head
    ema_theta = head.theta.detach().clone()
    opt = torch.optim.Adam([head.theta], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    history: list[dict[str, float]] = []
    step = 0
    bar = tqdm(range(cfg.epochs), desc="guide epochs", disable=not progress)
    for epoch in bar:
        sums: dict[str, float] = {}
        n = 0
        for batch in batches(epoch):
            losses = spg_losses(head, batch["global"], batch["patches"], batch["masks"], batch["labels"], cfg)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay
            ema_theta.mul_(decay).add_(head.theta.detach(), alpha=1 - decay)
            step += 1
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value.item()
            n += 1
        history.append({"epoch": epoch, **{k: v / max(n, 1) for k, v in sums.items()}})
        bar.set_postfix(loss=f"{history[-1].get('total', math.nan):.4f}")
    with torch.no_grad():
        head.theta.copy_(ema_theta)
    return head, history


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian of radius ``ceil(4 sigma)`` (``scipy.ndimage``'s truncation)."""
    radius = int(math.ceil(4 * sigma))
    x = torch.linspace(-radius, radius, 2 * radius + 1, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


@functools.lru_cache(maxsize=32)
def resample_matrix(n_in: int, n_out: int, sigma: float) -> torch.Tensor:
    """``[n_out, n_in]`` matrix of 1-D bilinear upsampling (``align_corners=False``) followed by a
    Gaussian blur of ``sigma`` output pixels with reflect padding (none when ``sigma <= 0``).

    Upsampling and blur are both separable linear maps, so a ``[h, w]`` grid is taken to the blurred
    ``[n_out, n_out]`` map by ``M_h @ grid @ M_w.T``: the same numbers as ``F.interpolate`` then a
    2-D Gaussian convolution, for a few percent of the work. Built once per shape, in float64.
    """
    eye = torch.eye(n_in, dtype=torch.float64)
    if n_in == n_out:
        up = eye
    else:  # row i: the upsampled unit impulse at i
        up = F.interpolate(eye[:, None, None, :], size=(1, n_out), mode="bilinear", align_corners=False)[:, 0, 0, :]
    if sigma > 0:
        kernel = gaussian_kernel1d(sigma)
        radius = (kernel.numel() - 1) // 2
        padded = F.pad(up[:, None, :], (radius, radius), mode="reflect")
        up = F.conv1d(padded, kernel.view(1, 1, -1))[:, 0, :]
    return up.T.contiguous().float()


def blur_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``[B, H, W]`` maps (kernel radius 4 sigma, as ``scipy.ndimage`` truncates;
    reflect padding, which is scipy's ``mirror``), as two banded matrix products."""
    if sigma <= 0:
        return maps
    rows = resample_matrix(maps.shape[-2], maps.shape[-2], float(sigma)).to(maps)
    cols = resample_matrix(maps.shape[-1], maps.shape[-1], float(sigma)).to(maps)
    return rows @ maps @ cols.T


@torch.no_grad()
def anomaly_maps(head: SPGHead, patches: torch.Tensor, size: int, blur_sigma: float = 4.0) -> torch.Tensor:
    """Inference maps ``(S_a + 1 - S_n) / 2`` (= ``S_a``), blurred per image -> ``[B, size, size]``.

    Upsampling and blur are applied together to the patch-grid probabilities (:func:`resample_matrix`).
    """
    grid = head.anomaly_grid(patches)
    rows = resample_matrix(grid.shape[-2], size, float(blur_sigma)).to(grid)
    cols = resample_matrix(grid.shape[-1], size, float(blur_sigma)).to(grid)
    return rows @ grid @ cols.T


def image_scores(
    maps: torch.Tensor, global_prob: torch.Tensor, *, lse_temperature: float = 0.05, top_fraction: float = 0.1
) -> dict[str, torch.Tensor]:
    """Every image-score pooling of ``maps [B, H, W]`` at once (``IMAGE_SCORES``).

    ``lse`` is ``T * log(mean(exp(map / T)))`` (-> max as T -> 0, -> mean as T -> inf).
    """
    flat = maps.flatten(1).float()
    n_top = max(1, int(round(top_fraction * flat.shape[1])))
    top_max = flat.amax(1)
    lse = lse_temperature * (torch.logsumexp(flat / lse_temperature, dim=1) - math.log(flat.shape[1]))
    return {
        "max": top_max,
        "global": global_prob.float(),
        "lse": lse,
        "top10_mean": flat.topk(n_top, dim=1).values.mean(1),
        "hybrid": 0.5 * top_max + 0.5 * global_prob.float(),
    }


def save_head(head: SPGHead, cfg: GuideConfig, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``guides.safetensors`` (EMA theta, dictionary, alive mask) and ``guides.json``."""
    tensors = {"theta": head.theta, "atoms": head.atoms, "alive": head.alive.to(torch.uint8)}
    meta = {"guide_names": list(GUIDE_NAMES), "config": to_dict(cfg), **(extra or {})}
    save_checkpoint(folder, CHECKPOINT_NAME, tensors, meta, GUIDE_SCHEMA_VERSION)


def load_head(folder: Path) -> tuple[SPGHead, GuideConfig]:
    """Load what :func:`save_head` wrote; refuse other schema versions with a clear message."""
    meta, t = load_checkpoint(folder, CHECKPOINT_NAME, GUIDE_SCHEMA_VERSION, "guides")
    cfg = from_dict(GuideConfig, meta["config"])
    head = SPGHead(t["atoms"], t["alive"].bool(), tau=cfg.tau, sparsity=cfg.sparsity, top_n=cfg.top_n, theta=t["theta"])
    return head, cfg


def coefficient_mass(head: SPGHead, guide: int = 3) -> np.ndarray:
    """Cumulative share of a guide's L1 mass held by its top-n atoms, n = 1..C (sorted descending)."""
    c = head.coefficients()[guide].detach().sort(descending=True).values.numpy()
    total = c.sum()
    return np.cumsum(c) / total if total > 0 else np.zeros_like(c)
