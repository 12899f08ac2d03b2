"""OpenAI CLIP ViT-L/14@336px through open_clip (``openclip``).

The visual tower is built at its native 336 px (24x24 patches), the pretrained weights are loaded
strictly, then the positional embedding is interpolated bicubically to the working grid (37x37 at
the paper's 518 px; the class-token embedding is kept). All 24 blocks run; every token goes through
``ln_post`` and the visual projection ``proj``: 1369 patch tokens of dim 768 plus the CLS token,
which is the global token (identical to open_clip's image embedding before L2 normalisation).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Backbone,
    WeightsInfo,
    WeightsMismatchError,
    random_weights_info,
    register_backbone,
    seeded_init,
)
from .vit import drop_blocks_from
from .weights import HubWeights, load_state_dict_file, load_strict, resolve_hub_weights

OPENCLIP_MODEL = "ViT-L-14-336"
OPENCLIP_TAG = "openai"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip.constants.OPENAI_DATASET_MEAN
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # open_clip.constants.OPENAI_DATASET_STD
DEFAULT_IMAGE_SIZE = 518

HUB = HubWeights(
    model=f"open_clip '{OPENCLIP_MODEL}' pretrained='{OPENCLIP_TAG}' (OpenAI CLIP ViT-L/14@336px)",
    repo_id="timm/vit_large_patch14_clip_336.openai",
    filenames=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
    local_files=("~/.cache/clip/ViT-L-14-336px.pt",),
    file_hint="open_clip state dict, or OpenAI's original ViT-L-14-336px.pt; full CLIP or "
              "visual tower only",
)


def interpolate_pos_embed(pos_embed: Tensor, new_grid: int) -> Tensor:
    """Resize a class-first positional embedding ``[1 + g*g, C]`` to ``[1 + new_grid**2, C]``.

    The patch part is treated as a ``g x g`` image (row-major) and resized bicubically
    (``align_corners=False``); the class-token row is kept unchanged.
    """
    cls_row, patch = pos_embed[:1], pos_embed[1:]
    old_grid = math.isqrt(patch.shape[0])
    if old_grid * old_grid != patch.shape[0]:
        raise ValueError(f"{patch.shape[0]} patch positions do not form a square grid")
    if old_grid == new_grid:
        return pos_embed.clone()
    channels = patch.shape[1]
    image = patch.reshape(1, old_grid, old_grid, channels).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    patch = image.permute(0, 2, 3, 1).reshape(new_grid * new_grid, channels).to(pos_embed.dtype)
    return torch.cat([cls_row, patch], dim=0)


def read_clip_visual_state_dict(path: str) -> dict[str, Tensor]:
    """Visual-tower state dict from an open_clip / OpenAI checkpoint (full model or visual only).

    OpenAI's original ``.pt`` files are TorchScript archives; they are read with ``torch.jit.load``
    when a plain state-dict load fails.
    """
    try:
        state_dict = load_state_dict_file(path)
    except Exception as plain_error:
        try:
            state_dict = torch.jit.load(path, map_location="cpu").state_dict()
        except Exception:
            raise WeightsMismatchError(f"cannot read {path}: {plain_error}") from None
    if any(k.startswith("visual.") for k in state_dict):
        state_dict = {
            k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")
        }
    return dict(state_dict)


class OpenClipBackbone(Backbone):
    """Frozen CLIP ViT-L/14-336 visual tower with projected tokens.

    Args:
        weights: optional local checkpoint (see :func:`read_clip_visual_state_dict`).
        random_weights: seeded random weights (shape checks and tests only).
        image_size: square input side, a multiple of 14; default 518 (37x37 patches, the paper's).
            At 336 the positional embedding is used as trained (no interpolation).
        depth: number of transformer blocks kept (``None``: all 24, the paper's setting).
    """

    def __init__(
        self,
        weights: str | None = None,
        random_weights: bool = False,
        image_size: int = DEFAULT_IMAGE_SIZE,
        depth: int | None = None,
    ) -> None:
        super().__init__("openclip", image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        self.weights_info: WeightsInfo = (
            random_weights_info()
            if random_weights
            else resolve_hub_weights("openclip", weights, HUB)
        )
        self.visual = self._build(depth)
        patch = self.visual.patch_size[0]
        if image_size % patch:
            raise ValueError(f"image_size must be a multiple of {patch}, got {image_size}")
        self.pretrained_grid = int(self.visual.grid_size[0])
        self.grid = image_size // patch
        self.depth = len(self.visual.transformer.resblocks)
        self.dim = int(self.visual.proj.shape[1])
        self._resize_positions()

    def _build(self, depth: int | None) -> nn.Module:
        """Create the visual tower at its native size (QuickGELU, as OpenAI trained it) and load."""
        import open_clip
        from open_clip.model import _build_vision_tower

        cfg = open_clip.get_model_config(OPENCLIP_MODEL)
        vision_cfg = dict(cfg["vision_cfg"])
        if depth is not None:
            if depth < 1:
                raise ValueError(f"depth must be >= 1, got {depth}")
            vision_cfg["layers"] = depth
        seeding = seeded_init() if self.random_weights else contextlib.nullcontext()
        with seeding:
            visual = _build_vision_tower(cfg["embed_dim"], vision_cfg, quick_gelu=True).eval()
        if not self.random_weights:
            state_dict = read_clip_visual_state_dict(self.weights_info.path)
            state_dict = drop_blocks_from(
                state_dict, vision_cfg["layers"], "transformer.resblocks."
            )
            what = f"{OPENCLIP_MODEL} visual from {self.weights_info.path}"
            load_strict(visual, state_dict, what)
        return visual

    def _resize_positions(self) -> None:
        """Interpolate the positional embedding to the working grid and update size attributes."""
        new = interpolate_pos_embed(self.visual.positional_embedding.detach(), self.grid)
        self.visual.positional_embedding = nn.Parameter(new, requires_grad=False)
        self.visual.grid_size = (self.grid, self.grid)
        self.visual.image_size = (self.image_size, self.image_size)

    def _run_transformer(self, x: Tensor) -> Tensor:
        """Run the blocks on batch-first tokens, whatever layout this open_clip version uses."""
        transformer = self.visual.transformer
        if hasattr(transformer, "batch_first"):  # open_clip >= 2.24 handles the layout itself
            return transformer(x)
        return transformer(x.permute(1, 0, 2)).permute(1, 0, 2)

    def _tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        v = self.visual
        x = v.conv1(x)  # [B, width, grid, grid]
        b = x.shape[0]
        x = x.flatten(2).transpose(1, 2)  # row-major patches, [B, grid*grid, width]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = self._run_transformer(v.ln_pre(x))
        x = v.ln_post(x) @ v.proj
        return x[:, 0], x[:, 1:].reshape(b, self.grid, self.grid, self.dim)

    def _describe_extra(self) -> dict[str, Any]:
        return {
            "arch": f"open_clip:{OPENCLIP_MODEL}",
            "tag": OPENCLIP_TAG,
            "depth": self.depth,
            "quick_gelu": True,
            "pos_embed": f"bicubic {self.pretrained_grid}->{self.grid}",
            "tokens": "ln_post + proj on every token; CLS global",
        }


@register_backbone("openclip")
def openclip(weights: str | None = None, random_weights: bool = False,
             **options: Any) -> OpenClipBackbone:
    """OpenAI CLIP ViT-L/14@336px via open_clip at 518 px: 37x37 tokens of dim 768."""
    return OpenClipBackbone(weights, random_weights, **options)
