"""Identity parameters of the procedural head avatar: proportions and colours, sampled
deterministically from a seed."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

Color = tuple[float, float, float]

# Palettes (linear-ish RGB in [0, 1]); a sampled identity picks one entry and jitters it.
SKIN_TONES: tuple[Color, ...] = (
    (0.96, 0.80, 0.69), (0.92, 0.72, 0.58), (0.85, 0.64, 0.49), (0.76, 0.54, 0.39),
    (0.62, 0.42, 0.29), (0.48, 0.31, 0.21), (0.36, 0.23, 0.16))
HAIR_COLORS: tuple[Color, ...] = (
    (0.07, 0.05, 0.04), (0.20, 0.12, 0.07), (0.38, 0.23, 0.12), (0.62, 0.45, 0.24),
    (0.86, 0.72, 0.45), (0.55, 0.20, 0.08), (0.62, 0.62, 0.62), (0.90, 0.90, 0.88))
EYE_COLORS: tuple[Color, ...] = (
    (0.25, 0.14, 0.07), (0.38, 0.24, 0.11), (0.22, 0.40, 0.62), (0.30, 0.45, 0.28),
    (0.45, 0.38, 0.20))
CLOTHING_COLORS: tuple[Color, ...] = (
    (0.80, 0.15, 0.15), (0.15, 0.30, 0.70), (0.15, 0.55, 0.30), (0.90, 0.75, 0.20),
    (0.20, 0.20, 0.22), (0.92, 0.92, 0.90), (0.55, 0.25, 0.60), (0.95, 0.50, 0.15),
    (0.25, 0.60, 0.65))

# (low, high) of every scalar parameter, metres unless noted.
RANGES: dict[str, tuple[float, float]] = {
    "head_width": (0.068, 0.082),  # half-width of the skull
    "head_height": (0.108, 0.122),  # half-height, crown to chin
    "head_depth": (0.092, 0.104),  # half-depth, face to back of head
    "jaw_width": (0.72, 0.90),  # lower-face width relative to the skull (ratio)
    "chin_forward": (0.002, 0.012),
    "nose_length": (0.034, 0.050),
    "nose_width": (0.008, 0.013),
    "nose_protrusion": (0.016, 0.028),
    "eye_spacing": (0.029, 0.035),  # half the distance between pupils
    "eye_radius": (0.0105, 0.0125),
    "mouth_width": (0.020, 0.028),  # half-width of the mouth
    "lip_fullness": (0.003, 0.007),
    "brow_thickness": (0.004, 0.0065),
    "ear_size": (0.026, 0.034),  # half-height of an ear
    "neck_radius": (0.050, 0.060),
    "shoulder_width": (0.19, 0.24),  # half-width of the torso
    "hair_volume": (0.0, 0.030),  # thickness of the hair over the scalp
    "hair_length": (0.0, 1.0),  # 0 short (nape hairline at the skull base) - 1 to the neck
    "hairline": (0.040, 0.070),  # height of the front hairline above the head centre
}


@dataclass(frozen=True)
class AvatarIdentity:
    """Shape and appearance of one avatar (see :data:`RANGES` for units and ranges)."""

    head_width: float = 0.075
    head_height: float = 0.115
    head_depth: float = 0.098
    jaw_width: float = 0.8
    chin_forward: float = 0.006
    nose_length: float = 0.042
    nose_width: float = 0.010
    nose_protrusion: float = 0.022
    eye_spacing: float = 0.032
    eye_radius: float = 0.0115
    mouth_width: float = 0.024
    lip_fullness: float = 0.005
    brow_thickness: float = 0.005
    ear_size: float = 0.030
    neck_radius: float = 0.055
    shoulder_width: float = 0.21
    hair_volume: float = 0.015
    hair_length: float = 0.3
    hairline: float = 0.055
    skin_color: Color = SKIN_TONES[2]
    hair_color: Color = HAIR_COLORS[1]
    eye_color: Color = EYE_COLORS[0]
    lip_color: Color = (0.72, 0.33, 0.33)
    clothing_color: Color = CLOTHING_COLORS[1]

    def __post_init__(self) -> None:
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            span = high - low
            if not low - span <= value <= high + span:
                raise ValueError(f"AvatarIdentity.{name}: expected about [{low}, {high}], "
                                 f"got {value}")
        for item in fields(self):
            if item.name.endswith("_color"):
                color = getattr(self, item.name)
                if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
                    raise ValueError(f"AvatarIdentity.{item.name}: expected 3 values in "
                                     f"[0, 1], got {color}")

    @classmethod
    def sample(cls, seed: int | torch.Generator) -> "AvatarIdentity":
        """A random identity; the same seed always gives the same identity.

        Args:
            seed: an integer seed or a ``torch.Generator`` (advanced by the call).
        """
        generator = seed if isinstance(seed, torch.Generator) else \
            torch.Generator().manual_seed(int(seed))

        def uniform() -> float:
            return float(torch.rand((), generator=generator))

        values = {name: low + (high - low) * uniform() for name, (low, high) in RANGES.items()}
        if uniform() < 0.15:  # closely cropped or bald
            values["hair_volume"] = 0.001 + 0.002 * uniform()
        skin = _jitter(_pick(SKIN_TONES, generator), generator, 0.03)
        lip_base = (min(1.0, skin[0] * 0.85 + 0.12), skin[1] * 0.55, skin[2] * 0.6)
        return cls(**values, skin_color=skin,
                   hair_color=_jitter(_pick(HAIR_COLORS, generator), generator, 0.03),
                   eye_color=_jitter(_pick(EYE_COLORS, generator), generator, 0.03),
                   lip_color=_jitter(lip_base, generator, 0.03),
                   clothing_color=_jitter(_pick(CLOTHING_COLORS, generator), generator, 0.05))


def _pick(palette: tuple[Color, ...], generator: torch.Generator) -> Color:
    return palette[int(torch.randint(len(palette), (), generator=generator))]


def _jitter(color: Color, generator: torch.Generator, amount: float) -> Color:
    noise = (torch.rand(3, generator=generator) * 2 - 1) * amount
    return tuple(float(min(1.0, max(0.0, c + n))) for c, n in zip(color, noise))


def sample_identity(generator: torch.Generator) -> AvatarIdentity:
    """:meth:`AvatarIdentity.sample` with an explicit generator."""
    return AvatarIdentity.sample(generator)
