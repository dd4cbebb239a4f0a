"""Sizes of DeX-Portrait's motion trainer (§3.2, Fig. 2a), one frozen dataclass with presets.

The paper gives the parts (a 2D+3D appearance encoder, a ConvNeXt pose encoder, a 512-d
latent expression encoder, a StyleGAN2-like decoder with AdaIN) but not their sizes; ``base``
is our reading at 256 px (MegaPortraits-like volume, ResNet-18 expression encoder at the
paper's 224 px crop), ``tiny`` runs a forward pass at 64 px on a CPU in well under a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from factorportrait.models.expression_encoder import ExpressionEncoderConfig


def _positive_ints(name: str, values: tuple[int, ...]) -> tuple[int, ...]:
    values = tuple(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                             for v in values):
        raise ValueError(f"MotionTrainerConfig.{name} must be a non-empty tuple of positive "
                         f"integers, got {values!r}")
    return values


@dataclass(frozen=True)
class MotionTrainerConfig:
    """Architecture of a :class:`~factorportrait.motion.model.MotionTrainer`.

    Attributes:
        image_size: side ``S`` of the square source, pose input and output images.
        appearance_widths: channels of the appearance encoder's 2D stages; each halves the
            resolution, so the volume is ``S / 2**len`` on a side.
        volume_channels, volume_depth: the feature volume ``(C, D, h, w)``; the last 2D stage
            is projected to ``C·D`` channels and reshaped (channel ``c·D + z`` is slice z).
        volume_blocks: 3D residual blocks on the volume (before the warp).
        pose_widths, pose_blocks: ConvNeXt stages of the pose encoder (patchify stem of
            stride 4, then a stride-2 downsampling before every later stage).
        decoder_widths: channels of the decoder's upsampling blocks, one ×2 block per
            appearance stage (so the output is ``S × S`` again).
        mapping_layers: MLP layers mapping the expression code to the AdaIN style (StyleGAN's
            mapping network; 0 = the code itself).
        discriminator_widths: PatchGAN layers per scale (all but the last stride 2).
        discriminator_scales: image pyramid levels judged by their own PatchGAN.
        expression: the expression encoder (our ResNet of
            :mod:`factorportrait.models.expression_encoder`; ``code_dim`` 512 as in the paper,
            ``crop_size`` the fixed face crop, ``num_parameters`` must be 0).
    """

    image_size: int = 256
    appearance_widths: tuple[int, ...] = (64, 128, 256)
    volume_channels: int = 32
    volume_depth: int = 16
    volume_blocks: int = 4
    pose_widths: tuple[int, ...] = (48, 96, 192, 384)
    pose_blocks: tuple[int, ...] = (2, 2, 4, 2)
    decoder_widths: tuple[int, ...] = (256, 128, 64)
    mapping_layers: int = 2
    discriminator_widths: tuple[int, ...] = (64, 128, 256, 512)
    discriminator_scales: int = 2
    expression: ExpressionEncoderConfig = field(default_factory=lambda: ExpressionEncoderConfig(
        crop_size=224, code_dim=512, num_parameters=0))

    def __post_init__(self) -> None:
        for name in ("appearance_widths", "pose_widths", "pose_blocks", "decoder_widths",
                     "discriminator_widths"):
            object.__setattr__(self, name, _positive_ints(name, getattr(self, name)))
        for name in ("image_size", "volume_channels", "volume_depth", "discriminator_scales"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MotionTrainerConfig.{name} must be a positive integer, "
                                 f"got {value!r}")
        for name in ("volume_blocks", "mapping_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"MotionTrainerConfig.{name} must be an integer >= 0, "
                                 f"got {value!r}")
        if len(self.pose_blocks) != len(self.pose_widths):
            raise ValueError(f"MotionTrainerConfig: pose_widths {self.pose_widths} and "
                             f"pose_blocks {self.pose_blocks} must have equal lengths")
        if len(self.decoder_widths) != len(self.appearance_widths):
            raise ValueError(f"MotionTrainerConfig: decoder_widths {self.decoder_widths} need one "
                             f"upsampling block per appearance stage {self.appearance_widths}")
        multiples = {  # total strides; the coarsest PatchGAN map must keep 2 x 2 patches
            "the appearance encoder's total stride": 2 ** len(self.appearance_widths),
            "the pose encoder's total stride": 4 * 2 ** (len(self.pose_widths) - 1),
            "twice the coarsest discriminator scale's stride": 2 * 2 ** (
                self.discriminator_scales - 1 + len(self.discriminator_widths) - 1)}
        for what, multiple in multiples.items():
            if self.image_size % multiple:
                raise ValueError(f"MotionTrainerConfig.image_size {self.image_size} must be a "
                                 f"multiple of {what}, {multiple}")
        if self.expression.num_parameters:
            raise ValueError("MotionTrainerConfig.expression.num_parameters must be 0: the "
                             "motion trainer has no expression-parameter head")

    @property
    def volume_size(self) -> int:
        """Side ``h = w`` of the feature volume."""
        return self.image_size // 2 ** len(self.appearance_widths)

    @property
    def code_dim(self) -> int:
        return self.expression.code_dim

    @classmethod
    def tiny(cls) -> MotionTrainerConfig:
        """For tests: 64 px images, an 8×8×8 volume of 4 channels, a 32 px expression crop."""
        return cls(image_size=64, appearance_widths=(8, 16), volume_channels=4, volume_depth=8,
                   volume_blocks=1, pose_widths=(8, 16), pose_blocks=(1, 1),
                   decoder_widths=(16, 8), mapping_layers=1, discriminator_widths=(8, 16, 16),
                   discriminator_scales=2,
                   expression=ExpressionEncoderConfig(crop_size=32, code_dim=32, widths=(8, 16),
                                                      blocks=(1, 1), stem_stride=2,
                                                      num_parameters=0))

    @classmethod
    def small(cls) -> MotionTrainerConfig:
        """The CPU demo: 64 px images, a 16×8×16×16 volume, a 64 px crop to 64-d codes."""
        return cls(image_size=64, appearance_widths=(16, 32), volume_channels=8, volume_depth=8,
                   volume_blocks=1, pose_widths=(16, 32), pose_blocks=(1, 1),
                   decoder_widths=(32, 16), mapping_layers=1, discriminator_widths=(16, 32, 32),
                   discriminator_scales=2,
                   expression=ExpressionEncoderConfig(crop_size=64, code_dim=64, widths=(16, 32),
                                                      blocks=(1, 1), stem_stride=2,
                                                      pooling="flatten", num_parameters=0))

    @classmethod
    def base(cls) -> MotionTrainerConfig:
        """Our paper-scale reading: 256 px, a 32×16×32×32 volume, 512-d codes (GPU)."""
        return cls()

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MotionTrainerConfig:
        """A preset by name (``tiny``, ``small``, ``base``) with top-level field overrides."""
        presets = {"tiny": cls.tiny, "small": cls.small, "base": cls.base}
        if name not in presets:
            raise ValueError(f"unknown motion trainer preset {name!r}; choose one of "
                             f"{', '.join(presets)}")
        base = presets[name]()
        valid = {f.name for f in fields(cls)} - {"expression"}
        if unknown := sorted(set(overrides) - valid):
            raise ValueError(f"MotionTrainerConfig: unknown fields {unknown}; valid: "
                             f"{sorted(valid)}")
        values = {f.name: getattr(base, f.name) for f in fields(cls)}
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists, ``expression`` as its own dict)."""
        values = {name: list(v) if isinstance(v, tuple) else v
                  for name, v in asdict(self).items() if name != "expression"}
        return {**values, "expression": self.expression.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MotionTrainerConfig:
        """Inverse of :meth:`to_dict`."""
        values = {name: tuple(v) if isinstance(v, list) else v
                  for name, v in data.items() if name != "expression"}
        expression = ExpressionEncoderConfig(**data["expression"])
        return cls(**values, expression=expression)
