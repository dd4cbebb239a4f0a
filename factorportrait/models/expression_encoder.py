"""Expression encoder: a face crop -> a 128-d expression code (FactorPortrait §4.1, supp. §8.1).

The paper's encoder (a ResNet34 with a linear head on a roll-normalised face crop, trained with
a talking-head decoder) is not public; this is our own, trained on synthetic renders with
DeX-Portrait's expression augmentations (§3.2, Fig. 3) by :mod:`factorportrait.expression.train`
(docs/expression.md).

    crop (B, 3, S, S) in [-1, 1] -> stem -> residual stages -> mean or flatten -> linear -> (B, 128)

``S = config.crop_size`` (224 by default, as the paper's crop; the ``small`` preset uses 64 px
so that training and evaluation run on a CPU). Whole frames are cropped by
:func:`factorportrait.expression.crop.crop_faces` (or an ``EncoderCodeSource``) first.

The backbone is a plain ResNet (basic blocks, BatchNorm): on a CPU at 32-96 px it is several
times faster per sample than a ConvNeXt of similar width (7x7 depthwise convolutions and
LayerNorms), and it is what the paper uses. A small linear ``parameter_head`` predicts the
synthetic expression parameters from the code during training (``num_parameters = 0``: none).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from factorportrait.io.atomic import atomic_output, atomic_write_bytes

CONFIG_FILE = "expression_encoder.json"
WEIGHTS_FILE = "expression_encoder.safetensors"
FORMAT = "factorportrait-expression-encoder/1"


@dataclass(frozen=True)
class ExpressionEncoderConfig:
    """Architecture of an :class:`ExpressionEncoder`.

    Attributes:
        crop_size: side of the square face crop in pixels (the input is ``(B, 3, S, S)``).
        code_dim: size of the expression code (128, the pipeline's ``expression_dim``).
        widths: channels of the residual stages; every stage after the first halves the
            resolution.
        blocks: basic blocks per stage (``len(blocks) == len(widths)``).
        stem_stride: 2 (one strided 3x3 convolution) or 4 (a strided 7x7 convolution and a
            max-pool, as ResNet at 224 px).
        pooling: ``"mean"`` (global average, ResNet's) or ``"flatten"`` (the final feature map
            flattened into the projection: keeps where a feature is — mouth or eyes — and
            learns faster on small crops).
        num_parameters: outputs of the linear training head (8 synthetic expression
            parameters); 0 for none.
        code_rank: ``None``, or ``k``: the last layer was folded with the expression-
            discriminant projection (:mod:`factorportrait.expression.projection`), so only the
            first ``k`` code entries vary (each with unit variance) and the rest are 0.
    """

    crop_size: int = 224
    code_dim: int = 128
    widths: tuple[int, ...] = (64, 128, 256, 512)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    stem_stride: int = 4
    pooling: str = "mean"
    num_parameters: int = 8
    code_rank: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        for name in ("crop_size", "code_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ExpressionEncoderConfig.{name} must be a positive integer, "
                                 f"got {value!r}")
        if not self.widths or len(self.widths) != len(self.blocks):
            raise ValueError(f"ExpressionEncoderConfig: widths {self.widths} and blocks "
                             f"{self.blocks} must be non-empty and of equal length")
        if min(self.widths) <= 0 or min(self.blocks) <= 0:
            raise ValueError("ExpressionEncoderConfig: widths and blocks must be positive, got "
                             f"{self.widths}, {self.blocks}")
        if self.stem_stride not in (2, 4):
            raise ValueError(f"ExpressionEncoderConfig.stem_stride must be 2 or 4, "
                             f"got {self.stem_stride!r}")
        if self.pooling not in ("mean", "flatten"):
            raise ValueError(f"ExpressionEncoderConfig.pooling must be 'mean' or 'flatten', "
                             f"got {self.pooling!r}")
        if self.code_rank is not None and not 0 < self.code_rank <= self.code_dim:
            raise ValueError(f"ExpressionEncoderConfig.code_rank must be None or in "
                             f"1..{self.code_dim}, got {self.code_rank}")
        if self.num_parameters < 0:
            raise ValueError(f"ExpressionEncoderConfig.num_parameters must be >= 0, "
                             f"got {self.num_parameters}")
        if self.crop_size < self.stem_stride * 2 ** (len(self.widths) - 1):
            raise ValueError(f"ExpressionEncoderConfig.crop_size {self.crop_size} is smaller "
                             f"than the network's total stride")

    @classmethod
    def tiny(cls, crop_size: int = 32) -> ExpressionEncoderConfig:
        """For tests: ~25k parameters, 32 px crops."""
        return cls(crop_size=crop_size, widths=(8, 16, 32), blocks=(1, 1, 1), stem_stride=2)

    @classmethod
    def small(cls, crop_size: int = 64) -> ExpressionEncoderConfig:
        """For CPU training and demos: ~0.57M parameters, 64 px crops (≈ 0.3 s per training
        step of 64 crops on one CPU core)."""
        return cls(crop_size=crop_size, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1),
                   stem_stride=2, pooling="flatten")

    @classmethod
    def resnet18(cls, crop_size: int = 224) -> ExpressionEncoderConfig:
        """The default: a ResNet-18 layout at the paper's 224 px crop (GPU training)."""
        return cls(crop_size=crop_size)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ExpressionEncoderConfig:
        """A preset by name (``tiny``, ``small``, ``resnet18``) with field overrides."""
        presets = {"tiny": cls.tiny, "small": cls.small, "resnet18": cls.resnet18}
        if name not in presets:
            raise ValueError(f"unknown expression encoder preset {name!r}; choose one of "
                             f"{', '.join(presets)}")
        return cls(**{**asdict(presets[name]()), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widths": list(self.widths), "blocks": list(self.blocks)}


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with a (projected) shortcut."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(channels_out)
        nn.init.zeros_(self.norm2.weight)  # each block starts as its shortcut
        self.shortcut = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H / stride, W / stride)``."""
        y = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class ExpressionEncoder(nn.Module):
    """Face crop ``(B, 3, S, S)`` in [-1, 1] -> expression code ``(B, code_dim)``."""

    def __init__(self, config: ExpressionEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else ExpressionEncoderConfig()
        width = config.widths[0]
        if config.stem_stride == 4:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU())
        stages, channels = [], width
        for index, (out, count) in enumerate(zip(config.widths, config.blocks)):
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, out, stride))
                channels = out
        self.stages = nn.Sequential(*stages)
        side = config.crop_size // (config.stem_stride * 2 ** (len(config.widths) - 1))
        features = channels * (side * side if config.pooling == "flatten" else 1)
        self.projection = nn.Linear(features, config.code_dim)
        self.parameter_head = (nn.Linear(config.code_dim, config.num_parameters)
                               if config.num_parameters else None)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """``crops (B, 3, S, S)`` in [-1, 1], ``S = config.crop_size`` -> ``(B, code_dim)``."""
        size = self.config.crop_size
        if crops.ndim != 4 or tuple(crops.shape[1:]) != (3, size, size):
            raise ValueError(f"ExpressionEncoder: expected face crops (B, 3, {size}, {size}) in "
                             f"[-1, 1], got {tuple(crops.shape)}; crop whole frames with "
                             "factorportrait.expression.crop_faces or EncoderCodeSource")
        features = self.stages(self.stem(crops))  # (B, C, s, s), s = S / total stride
        if self.config.pooling == "flatten":
            return self.projection(features.flatten(1))  # (B, C·s·s) -> (B, code_dim)
        return self.projection(features.mean(dim=(2, 3)))  # (B, C) -> (B, code_dim)

    def predict_parameters(self, codes: torch.Tensor) -> torch.Tensor:
        """Training head: ``codes (B, code_dim)`` -> expression parameters
        ``(B, num_parameters)``."""
        if self.parameter_head is None:
            raise ValueError("ExpressionEncoder has no parameter head (num_parameters = 0)")
        return self.parameter_head(codes)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``expression_encoder.json`` + ``expression_encoder.safetensors`` (atomic)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_output(directory / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT})
        config = json.dumps({"format": FORMAT, "config": self.config.to_dict()}, indent=2)
        atomic_write_bytes(directory / CONFIG_FILE, config.encode())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike,
                        map_location: str | torch.device = "cpu") -> ExpressionEncoder:
        """Load a folder written by :meth:`save_pretrained` (in eval mode)."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"expression encoder: {path} not found (expected a "
                                        "folder written by ExpressionEncoder.save_pretrained)")
        data = json.loads(config_path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{config_path}: not an expression encoder config (format "
                             f"{data.get('format') if isinstance(data, dict) else None!r}, "
                             f"expected {FORMAT!r})")
        from factorportrait.io.tensors import read_safetensors

        encoder = cls(ExpressionEncoderConfig(**data["config"]))
        state = read_safetensors(weights_path, "expression encoder weights", map_location)
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights_path}: weights do not match the config: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}")
        return encoder.to(map_location).eval()
