"""Cameras of the synthetic clip kinds, in the avatar / trajectory world (docs/cameras.md:
OpenCV axes, metres, head centre at the origin, a frontal camera at ``z = −distance``).

- phone: one fixed, roughly frontal camera with a wide iPhone-like lens at arm's length;
- studio: a rig of fixed cameras spread on an arc around the head (longer lenses, ~1 m);
- ViewSweep / DynamicSweep: a moving handheld-like path from ``sample_viewsweep`` (spin or
  spiral, 25-40 cm, varied look-at point, 72° lens; FactorPortrait supp. §7.3).

Each function draws from the given generator in a fixed order; cameras come back in float32.
"""

from __future__ import annotations

import math

import torch

from factorportrait.geometry import Cameras, sample_viewsweep, static

FRAMING_M = (0.34, 0.42)  # vertical extent seen at the look-at distance (head and neck)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _fov_for(distance: float, extent: float) -> float:
    """Field of view (degrees) that sees ``extent`` metres at ``distance``."""
    return math.degrees(2 * math.atan(extent / (2 * distance)))


def phone_camera(frames: int, width: int, height: int, generator: torch.Generator) -> Cameras:
    """A fixed near-frontal camera ``(frames,)``: 35-45 cm away, yaw ±6°, elevation −4…6°,
    aimed a little below the head centre, a lens framing head and neck (``FRAMING_M``)."""
    distance = _uniform(generator, 0.35, 0.45)
    yaw, elevation = _uniform(generator, -6.0, 6.0), _uniform(generator, -4.0, 6.0)
    target = (_uniform(generator, -0.01, 0.01), _uniform(generator, 0.02, 0.05), 0.0)
    fov = _fov_for(distance, _uniform(generator, *FRAMING_M))
    return static(frames, yaw_deg=yaw, elevation_deg=elevation, distance=distance, target=target,
                  fov_deg=fov, width=width, height=height, dtype=torch.float64).to(torch.float32)


def studio_rig(views: int, width: int, height: int, generator: torch.Generator
               ) -> list[Cameras]:
    """``views`` fixed cameras (one ``Cameras`` of 1 frame each) on an arc of yaw ±70° (evenly
    spread, jittered ±5°), elevation −10…20°, 0.8-1.1 m away, all framing the head."""
    half_arc = 70.0 if views > 1 else 0.0
    rig = []
    for view in range(views):
        even = -half_arc + 2 * half_arc * view / max(views - 1, 1)
        distance = _uniform(generator, 0.8, 1.1)
        yaw, elevation = even + _uniform(generator, -5.0, 5.0), _uniform(generator, -10.0, 20.0)
        target = (_uniform(generator, -0.01, 0.01), _uniform(generator, 0.02, 0.05),
                  _uniform(generator, -0.01, 0.01))
        fov = _fov_for(distance, _uniform(generator, *FRAMING_M))
        rig.append(static(1, yaw_deg=yaw, elevation_deg=elevation, distance=distance,
                          target=target, fov_deg=fov, width=width, height=height,
                          dtype=torch.float64).to(torch.float32))
    return rig


def sweep_cameras(frames: int, width: int, height: int, generator: torch.Generator) -> Cameras:
    """A ViewSweep-style moving camera ``(frames,)``: spin or spiral (``sample_viewsweep``)."""
    return sample_viewsweep(frames, generator, width=width, height=height,
                            dtype=torch.float64).to(torch.float32)
