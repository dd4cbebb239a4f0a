"""Synthetic performances: what the avatar does in a clip (expression weights and head pose).

A :class:`PerformanceScript` is a continuous-time performance drawn once from a generator and
evaluated at any times (seconds), so a long "capture" can be cut into segments (DynamicSweep,
FactorPortrait supp. §7.4) and several cameras can watch one take (studio):

- talking: phrases of syllables (4-6 per second) open the jaw in raised-cosine pulses, some
  with rounded lips (``lip_pucker``), separated by pauses;
- blinks every 1.5-6 s (both eyes, ~0.2 s);
- brief expressions (smile, brow raise or frown, pucker, cheek puff) now and then;
- slow drifts of smile and brows around a per-script mood;
- head motion: sums of slow sinusoids on yaw / pitch / roll (a few to ~15 degrees) and
  translation (about a centimetre).

Expression weights follow ``EXPRESSION_NAMES`` and stay in [0, 1]. Head rotation is axis-angle
(radians) of ``R_y(yaw) R_x(pitch) R_z(roll)`` in the avatar world (docs/rendering.md), head
translation is in metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from factorportrait.body import EXPRESSION_NAMES
from factorportrait.geometry.rotations import (
    matrix_to_quaternion,
    rotation_x,
    rotation_y,
    rotation_z,
)

COLUMN = {name: index for index, name in enumerate(EXPRESSION_NAMES)}
GESTURES = ("smile", "brow_raise", "brow_frown", "lip_pucker", "cheek_puff")
SLOW = ("smile", "brow_raise", "brow_frown")  # channels with a drifting base level
HEAD_DEGREES = (12.0, 7.0, 4.0)  # yaw, pitch, roll amplitude scale per wave
HEAD_METRES = (0.008, 0.005, 0.008)  # x, y, z translation amplitude scale per wave
WAVES = 3  # sinusoids per head channel


@dataclass(frozen=True, eq=False)
class Performance:
    """Per-frame avatar controls (float32).

    Attributes:
        expression: ``(F, E)`` weights of ``EXPRESSION_NAMES`` in [0, 1].
        head_rotation: ``(F, 3)`` axis-angle, radians, world axes.
        head_translation: ``(F, 3)`` metres, world frame.
    """

    expression: Tensor
    head_rotation: Tensor
    head_translation: Tensor

    def __len__(self) -> int:
        return int(self.expression.shape[0])

    @classmethod
    def static(cls, expression: Tensor, frames: int) -> Performance:
        """One expression ``(E,)`` held for ``frames`` frames in the neutral head pose."""
        expression = expression.float().expand(frames, len(EXPRESSION_NAMES)).clone()
        return cls(expression, torch.zeros(frames, 3), torch.zeros(frames, 3))


@dataclass(frozen=True, eq=False)
class PerformanceScript:
    """A continuous-time performance.

    Attributes:
        duration: seconds the events were drawn for.
        events: ``(N, 4)`` pulses: expression column, centre (s), half-width (s), peak weight.
        slow_base: ``(E,)`` resting weights.
        slow_waves: ``(E, 2, 3)`` drift sinusoids per expression: amplitude, Hz, phase (rad).
        head_waves: ``(6, WAVES, 3)`` sinusoids of yaw, pitch, roll (degrees) and x, y, z
            (metres): amplitude, Hz, phase (rad).
    """

    duration: float
    events: Tensor
    slow_base: Tensor
    slow_waves: Tensor
    head_waves: Tensor

    def evaluate(self, times: Tensor) -> Performance:
        """The performance at ``times (F,)`` seconds → :class:`Performance` of ``F`` frames."""
        times = times.double()
        slow = self.slow_base + _waves(self.slow_waves, times)  # (F, E)
        centre, half_width, peak = self.events[:, 1], self.events[:, 2], self.events[:, 3]
        pulses = peak * _raised_cosine((times[:, None] - centre) / half_width)  # (F, N)
        columns = torch.nn.functional.one_hot(self.events[:, 0].long(), len(EXPRESSION_NAMES))
        events = (pulses[:, :, None] * columns).amax(1) if len(self.events) else \
            torch.zeros_like(slow)  # (F, E)
        expression = torch.maximum(slow, events).clamp(0.0, 1.0)
        head = _waves(self.head_waves, times)  # (F, 6)
        rotation = _euler_to_axis_angle(torch.deg2rad(head[:, :3]))
        return Performance(expression.float(), rotation.float(), head[:, 3:].float())


def _waves(waves: Tensor, times: Tensor) -> Tensor:
    """Sum of sinusoids ``waves (C, K, 3)`` (amplitude, Hz, phase) at ``times (F,)``
    → ``(F, C)``."""
    amplitude, frequency, phase = waves.unbind(-1)  # (C, K) each
    angle = 2 * math.pi * frequency * times[:, None, None] + phase  # (F, C, K)
    return (amplitude * torch.sin(angle)).sum(-1)


def _raised_cosine(x: Tensor) -> Tensor:
    """A smooth pulse: ``(1 + cos πx) / 2`` for ``|x| < 1``, else 0."""
    return torch.where(x.abs() < 1, 0.5 * (1 + torch.cos(math.pi * x)), torch.zeros_like(x))


def _euler_to_axis_angle(angles: Tensor) -> Tensor:
    """Yaw, pitch, roll ``(F, 3)`` radians → axis-angle ``(F, 3)`` of R_y R_x R_z."""
    yaw, pitch, roll = angles.unbind(-1)
    quat = matrix_to_quaternion(rotation_y(yaw) @ rotation_x(pitch) @ rotation_z(roll))
    vector = quat[:, 1:]  # w >= 0
    norm = vector.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(norm, quat[:, :1])
    return torch.where(norm > 0, vector * angle / norm.clamp_min(1e-30), torch.zeros_like(vector))


# -- sampling -----------------------------------------------------------------------------------
def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _speech_events(duration: float, generator: torch.Generator) -> list[list[float]]:
    """Jaw pulses in phrases of syllables, some with rounded lips, separated by pauses."""
    events, t = [], _uniform(generator, 0.0, 0.6)
    while t < duration:
        phrase_end = t + _uniform(generator, 1.2, 3.5)
        rate = _uniform(generator, 3.5, 5.5)  # syllables per second
        loudness = _uniform(generator, 0.5, 1.0)
        while t < phrase_end:
            half_width = _uniform(generator, 0.6, 0.9) / rate
            events.append([COLUMN["jaw_open"], t, half_width,
                           loudness * _uniform(generator, 0.35, 0.9)])
            if _uniform(generator, 0.0, 1.0) < 0.2:  # a rounded vowel
                events.append([COLUMN["lip_pucker"], t, half_width,
                               _uniform(generator, 0.3, 0.7)])
            t += _uniform(generator, 0.75, 1.25) / rate
        t += _uniform(generator, 0.3, 1.2)  # pause between phrases
    return events


def _blink_and_gesture_events(duration: float, generator: torch.Generator
                              ) -> list[list[float]]:
    """Blinks every 1.5-6 s; brief expressions (about one per 7 s)."""
    events, t = [], _uniform(generator, 0.0, 3.0)
    while t < duration:
        half_width, peak = _uniform(generator, 0.08, 0.15), _uniform(generator, 0.85, 1.0)
        events.append([COLUMN["blink_left"], t, half_width, peak])
        events.append([COLUMN["blink_right"], t, half_width, peak])
        t += _uniform(generator, 1.5, 6.0)
    t = _uniform(generator, 0.0, 7.0)
    while t < duration:
        name = GESTURES[int(torch.randint(len(GESTURES), (), generator=generator))]
        events.append([COLUMN[name], t, _uniform(generator, 0.4, 1.2),
                       _uniform(generator, 0.4, 1.0)])
        t += _uniform(generator, 2.0, 12.0)
    return events


def _wave_table(channels: int, waves: int, amplitude: Tensor, hertz: tuple[float, float],
                generator: torch.Generator) -> Tensor:
    """``(channels, waves, 3)`` random sinusoids: amplitude ∈ [0.3, 1] · ``amplitude (C,)``,
    frequency ∈ ``hertz``, phase ∈ [0, 2π)."""
    draw = torch.rand(channels, waves, 3, generator=generator, dtype=torch.float64)
    return torch.stack([amplitude[:, None] * (0.3 + 0.7 * draw[..., 0]),
                        hertz[0] + (hertz[1] - hertz[0]) * draw[..., 1],
                        2 * math.pi * draw[..., 2]], -1)


def sample_script(duration: float, generator: torch.Generator) -> PerformanceScript:
    """Draw a talking performance of ``duration`` seconds (deterministic given ``generator``)."""
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"sample_script: duration must be positive seconds, got {duration!r}")
    events = _speech_events(duration, generator) + _blink_and_gesture_events(duration, generator)
    base = torch.zeros(len(EXPRESSION_NAMES), dtype=torch.float64)
    drift = torch.zeros(len(EXPRESSION_NAMES), dtype=torch.float64)
    for name, (high_base, high_drift) in zip(SLOW, ((0.35, 0.15), (0.2, 0.1), (0.15, 0.1))):
        base[COLUMN[name]] = _uniform(generator, 0.0, high_base)
        drift[COLUMN[name]] = _uniform(generator, 0.0, high_drift)
    slow_waves = _wave_table(len(EXPRESSION_NAMES), 2, drift, (0.05, 0.3), generator)
    energy = _uniform(generator, 0.5, 1.5)  # how much this person moves
    scale = energy * torch.tensor(HEAD_DEGREES + HEAD_METRES, dtype=torch.float64)
    head_waves = torch.cat([_wave_table(3, WAVES, scale[:3], (0.1, 0.7), generator),
                            _wave_table(3, WAVES, scale[3:], (0.05, 0.4), generator)])
    table = torch.tensor(events, dtype=torch.float64).reshape(-1, 4)
    return PerformanceScript(float(duration), table, base, slow_waves, head_waves)


def static_expression(generator: torch.Generator) -> Tensor:
    """One random frozen expression ``(E,)`` for ViewSweep (FactorPortrait §3.2): each
    expression is on with some probability at a random weight; both eyes blink together."""
    odds = {"jaw_open": 0.4, "smile": 0.4, "lip_pucker": 0.2, "brow_raise": 0.3,
            "brow_frown": 0.2, "blink_left": 0.1, "cheek_puff": 0.15}
    expression = torch.zeros(len(EXPRESSION_NAMES))
    for name, probability in odds.items():
        on = _uniform(generator, 0.0, 1.0) < probability
        weight = _uniform(generator, 0.2, 1.0)
        expression[COLUMN[name]] = weight if on else 0.0
    expression[COLUMN["blink_right"]] = expression[COLUMN["blink_left"]]
    return expression
