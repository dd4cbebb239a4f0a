"""`PortraitConditions`: everything the DiT is conditioned on, in one typed dataclass.

Every control mode of the pipeline (driving video, camera only, expression-only edit, ...)
is one way of filling this dataclass; the model has a single code path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch


@dataclass
class PortraitConditions:
    """Conditions of one batch, for a video of ``F = 4·(F_lat−1)+1`` frames.

    Attributes:
        reference_latent: ``(B, 16, 1, h, w)`` Wan-VAE latent of the reference image. It is
            prepended in time as DiT frame 0 (FactorPortrait §4.2).
        normal_latents: ``(B, 16, F_lat, h, w)`` VAE latents of the rendered normal-map video
            (zeros to drop the pose condition).
        rays: ``(B, 24, 1+F_lat, h, w)`` Plücker rays at latent resolution, relative to the
            reference camera. Frame 0 is the reference (identity) camera; every latent frame
            packs 4 video frames × 6 channels, channel ``6k + c`` holding video frame ``k`` of
            the chunk (see :func:`factorportrait.geometry.rays.dit_rays`).
        expression: ``(B, T, 128)`` per-video-frame expression codes, ``T = 4·(F_lat−1)+1``;
            ``None`` drops the expression condition (no AdaLN offset on any frame).
        context: ``(B, L, text_dim)`` text context for cross-attention; ``None`` uses the
            model's stored null context.
        head_pose: ``(B, 1+T, 3, 4)`` DeX-Portrait head poses ``P = [sR | t]``
            (:mod:`factorportrait.geometry.head_pose`): index 0 the source (reference image),
            1…T the driving video frames. Read by models with ``head_pose_rays`` (ray maps in
            channels) or ``reference_warp_blocks`` (the reference warped by ``P_d P_s⁻¹``);
            ``None``: no head-pose condition (zero ray maps, no warping).
        landmarks: ``(B, T, N, 2)`` 2D facial landmarks in [−1, 1] image coordinates, the
            expression condition of models with ``expression_condition="landmarks"``
            (FactorPortrait C3); ``None`` drops it.
    """

    reference_latent: torch.Tensor
    normal_latents: torch.Tensor
    rays: torch.Tensor
    expression: Optional[torch.Tensor] = None
    context: Optional[torch.Tensor] = None
    head_pose: Optional[torch.Tensor] = None
    landmarks: Optional[torch.Tensor] = None

    @property
    def batch_size(self) -> int:
        return self.reference_latent.shape[0]

    @property
    def latent_frames(self) -> int:
        """``F_lat``: the number of generated latent frames."""
        return self.normal_latents.shape[2]

    def validate(self, noisy_latents: Optional[torch.Tensor] = None, *, latent_channels: int = 16,
                 ray_channels: int = 24, expression_dim: int = 128,
                 text_dim: Optional[int] = None, check_finite: bool = True,
                 landmark_points: Optional[int] = None) -> "PortraitConditions":
        """Check shapes, dtypes and finiteness; raise ``ValueError`` naming the field.

        Args:
            noisy_latents: ``(B, 16, F_lat, h, w)``; when given, its shape must agree.
            check_finite: also reject NaN/Inf (a device sync; the model's forward skips it).
        Returns:
            ``self``, so calls can be chained.
        """
        ref = self.reference_latent
        _check_tensor("reference_latent", ref, 5, check_finite)
        batch, _, _, height, width = ref.shape
        _check_shape("reference_latent", ref, (batch, latent_channels, 1, height, width),
                     "(B, 16, 1, h, w)")
        _check_tensor("normal_latents", self.normal_latents, 5, check_finite)
        frames = self.normal_latents.shape[2]
        _check_shape("normal_latents", self.normal_latents,
                     (batch, latent_channels, frames, height, width), "(B, 16, F_lat, h, w)")
        _check_tensor("rays", self.rays, 5, check_finite)
        _check_shape("rays", self.rays, (batch, ray_channels, 1 + frames, height, width),
                     "(B, 24, 1+F_lat, h, w)")
        if self.expression is not None:
            _check_tensor("expression", self.expression, 3, check_finite)
            _check_shape("expression", self.expression,
                         (batch, 4 * (frames - 1) + 1, expression_dim),
                         "(B, T, 128) with T = 4·(F_lat−1)+1")
        if self.context is not None:
            _check_tensor("context", self.context, 3, check_finite)
            expected_dim = self.context.shape[2] if text_dim is None else text_dim
            _check_shape("context", self.context, (batch, self.context.shape[1], expected_dim),
                         "(B, L, text_dim)")
        video_frames = 4 * (frames - 1) + 1
        if self.head_pose is not None:
            _check_tensor("head_pose", self.head_pose, 4, check_finite)
            _check_shape("head_pose", self.head_pose, (batch, 1 + video_frames, 3, 4),
                         "(B, 1+T, 3, 4) with T = 4·(F_lat−1)+1 (source, then driving)")
        if self.landmarks is not None:
            _check_tensor("landmarks", self.landmarks, 4, check_finite)
            points = self.landmarks.shape[2] if landmark_points is None else landmark_points
            _check_shape("landmarks", self.landmarks, (batch, video_frames, points, 2),
                         "(B, T, N, 2) with T = 4·(F_lat−1)+1")
        if noisy_latents is not None:
            _check_tensor("noisy_latents", noisy_latents, 5, check_finite)
            _check_shape("noisy_latents", noisy_latents,
                         (batch, latent_channels, frames, height, width),
                         "(B, 16, F_lat, h, w) matching normal_latents")
        return self

    def map(self, fn) -> "PortraitConditions":
        """Apply ``fn`` to every tensor field (e.g. ``lambda t: t.to(device)``)."""
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if getattr(self, f.name) is not None})

    def to(self, *args, **kwargs) -> "PortraitConditions":
        return self.map(lambda tensor: tensor.to(*args, **kwargs))


def _check_tensor(name: str, value: object, ndim: int, check_finite: bool) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"PortraitConditions.{name} must be a torch.Tensor, got "
                         f"{type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"PortraitConditions.{name} must be a floating-point tensor, got "
                         f"dtype {value.dtype}")
    if value.ndim != ndim:
        raise ValueError(f"PortraitConditions.{name} must have {ndim} dimensions, got shape "
                         f"{tuple(value.shape)}")
    if check_finite and not torch.isfinite(value).all():
        raise ValueError(f"PortraitConditions.{name} contains NaN or Inf values")


def _check_shape(name: str, value: torch.Tensor, expected: tuple[int, ...], pattern: str) -> None:
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"PortraitConditions.{name} has shape {tuple(value.shape)}; expected "
                         f"{pattern} = {tuple(expected)}")


def check_required(conditions: PortraitConditions, config, where: str) -> None:
    """Refuse, in one line, conditions that lack an input the model's config reads as a
    condition it was trained on (``head_pose`` for DeX pose paths, ``landmarks`` for C3).

    ``config`` is a :class:`~factorportrait.config.DiTConfig`; ``where`` names the source
    (``"training batch"``, ``"the render"``) in the message.
    """
    if config.expression_condition == "landmarks" and conditions.landmarks is None:
        raise ValueError(f"{where} has no landmarks, but the DiT's expression condition is "
                         "landmarks (expression_condition: landmarks): give landmarks (F, "
                         f"{config.landmark_points}, 2) — data.options.landmarks: true for "
                         "synthetic data, a control track with landmarks, or an avatar mesh "
                         "source")
    needs_pose = config.head_pose_rays or bool(config.reference_warp_blocks)
    if needs_pose and conditions.head_pose is None:
        raise ValueError(f"{where} has no head_pose, but the DiT reads DeX head poses "
                         "(head_pose_rays / reference_warp_blocks): give head poses — a "
                         "control track or mesh pose with head_rotation/head_translation")
