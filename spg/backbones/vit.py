"""DINO vision transformers from timm: ``dinov3`` (ViT-L/16, main) and ``dinov2`` (ViT-L/14).

Tokens are the output of the last transformer block *before* the final norm. The CLS token is the
global token; register tokens (4 for DINOv3) are dropped; the remaining tokens form the patch grid
(28x28 for DINOv3 and 32x32 for DINOv2 at 448 px).
"""

from __future__ import annotations

import contextlib
import importlib
import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .base import Backbone, WeightsInfo, random_weights_info, register_backbone, seeded_init
from .weights import HubWeights, load_state_dict_file, load_strict, resolve_hub_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TimmViTSpec:
    """A timm ViT architecture, its pretrained tag and the token layout SPG expects."""

    arch: str
    tag: str
    image_size: int
    num_registers: int

    @property
    def hub(self) -> HubWeights:
        """Where timm keeps the pretrained weights on the Hugging Face hub."""
        return HubWeights(
            model=f"timm '{self.arch}.{self.tag}'",
            repo_id=f"timm/{self.arch}.{self.tag}",
            filenames=("model.safetensors", "pytorch_model.bin"),
            file_hint="timm or original Meta state dict: .safetensors, .pth or .bin",
        )


SPECS = {
    "dinov3": TimmViTSpec("vit_large_patch16_dinov3", "lvd1689m", 448, 4),
    "dinov2": TimmViTSpec("vit_large_patch14_dinov2", "lvd142m", 448, 0),
}


def drop_blocks_from(state_dict: dict[str, Tensor], depth: int, prefix: str) -> dict[str, Tensor]:
    """Remove the parameters of blocks ``>= depth`` (keys ``{prefix}{i}.*``) from a state dict."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    return {k: v for k, v in state_dict.items()
            if not ((m := pattern.match(k)) and int(m.group(1)) >= depth)}


class TimmViTBackbone(Backbone):
    """A frozen timm ViT giving (CLS, patch grid) from the last block, before the final norm.

    Args:
        name: registry name (``dinov3`` or ``dinov2``).
        weights: optional local weights file (timm or original Meta format; converted with timm's
            checkpoint filter, which also resamples absolute position embeddings, then loaded
            strictly).
        random_weights: seeded random weights (shape checks and tests only).
        image_size: square input side; default 448 (the paper's).
        depth: number of transformer blocks kept; tokens come from block ``depth``. ``None`` keeps
            all 24 (the paper's setting); smaller values serve layer ablations and fast tests.
    """

    def __init__(
        self,
        name: str,
        weights: str | None = None,
        random_weights: bool = False,
        image_size: int | None = None,
        depth: int | None = None,
    ) -> None:
        self.spec = SPECS[name]
        super().__init__(name, image_size or self.spec.image_size, IMAGENET_MEAN, IMAGENET_STD)
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.weights_info: WeightsInfo = (
            random_weights_info() if random_weights
            else resolve_hub_weights(name, weights, self.spec.hub)
        )
        self.model = self._build(depth)
        self.depth = len(self.model.blocks)
        self.dim = int(self.model.embed_dim)
        self.grid = self._check_layout()

    def _build(self, depth: int | None) -> nn.Module:
        """Create the timm model at ``image_size`` and load the weights strictly."""
        import timm

        kwargs: dict[str, Any] = {"img_size": self.image_size}
        if depth is not None:
            kwargs["depth"] = depth
        seeding = seeded_init() if self.random_weights else contextlib.nullcontext()
        with seeding:
            model = timm.create_model(self.spec.arch, pretrained=False, **kwargs).eval()
        if not self.random_weights:
            self._load(model)
        return model

    def _load(self, model: nn.Module) -> None:
        """Convert (timm's checkpoint filter) and strictly load the resolved weights file."""
        state_dict = load_state_dict_file(self.weights_info.path)
        module = importlib.import_module(type(model).__module__)
        convert = getattr(module, "checkpoint_filter_fn", None)
        if convert is not None:
            state_dict = convert(state_dict, model)
        state_dict = drop_blocks_from(state_dict, len(model.blocks), "blocks.")
        load_strict(model, state_dict, f"{self.spec.arch} from {self.weights_info.path}")

    def _check_layout(self) -> int:
        """Verify CLS/register/patch layout against the spec; return the grid side."""
        model = self.model
        if getattr(model, "cls_token", None) is None:
            raise RuntimeError(f"{self.spec.arch} has no CLS token")
        reg = getattr(model, "reg_token", None)
        registers = 0 if reg is None else int(reg.shape[1])
        if registers != self.spec.num_registers or model.num_prefix_tokens != 1 + registers:
            raise RuntimeError(
                f"{self.spec.arch}: expected 1 CLS + {self.spec.num_registers} registers, found "
                f"{registers} registers and {model.num_prefix_tokens} prefix tokens"
            )
        gh, gw = model.patch_embed.grid_size
        patch = model.patch_embed.patch_size[0]
        if gh != gw or gh * patch != self.image_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {patch}")
        return int(gh)

    def _tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        (patches, prefix), = self.model.forward_intermediates(
            x,
            indices=[self.depth - 1],
            return_prefix_tokens=True,
            norm=False,
            output_fmt="NLC",
            intermediates_only=True,
        )
        cls = prefix[:, 0]  # prefix = [CLS, registers...]; registers are dropped
        return cls, patches.reshape(x.shape[0], self.grid, self.grid, self.dim)

    def _describe_extra(self) -> dict[str, Any]:
        return {
            "arch": f"timm:{self.spec.arch}",
            "tag": self.spec.tag,
            "depth": self.depth,
            "tokens": "block output before final norm; CLS global; registers dropped",
        }


@register_backbone("dinov3")
def dinov3(weights: str | None = None, random_weights: bool = False,
           **options: Any) -> TimmViTBackbone:
    """DINOv3 ViT-L/16 (``lvd1689m``), 448 px -> 28x28 tokens of dim 1024 (paper's main one)."""
    return TimmViTBackbone("dinov3", weights, random_weights, **options)


@register_backbone("dinov2")
def dinov2(weights: str | None = None, random_weights: bool = False,
           **options: Any) -> TimmViTBackbone:
    """DINOv2 ViT-L/14 (``lvd142m``), 448 px -> 32x32 tokens of dim 1024 (ablation backbone)."""
    return TimmViTBackbone("dinov2", weights, random_weights, **options)
