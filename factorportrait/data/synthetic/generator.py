"""One synthetic clip: its controls (performance + cameras, by kind), its rendered RGB and
normal-map frames, and its annotations.

    kind          performance                                    cameras
    phone         talking script of the clip's length            one fixed near-frontal camera
    studio        one talking script per take, shared by views   a fixed rig on an arc, one view
    viewsweep     one random frozen expression, neutral pose     spin or spiral (sample_viewsweep)
    dynamicsweep  a random segment of the identity's long script spin or spiral

Random draws come from a ``torch.Generator`` seeded per clip (per take for studio, per identity
for the capture script) with :func:`derive_seed`, so every clip is reproducible on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from factorportrait.body import EXPRESSION_NAMES, AvatarIdentity, HeadAvatar
from factorportrait.data.annotations import ClipAnnotations
from factorportrait.data.synthetic.config import (
    ClipSpec,
    SyntheticConfig,
    derive_seed,
    identity_seed,
)
from factorportrait.data.synthetic.identity import avatar_from_annotations, identity_to_vector
from factorportrait.data.synthetic.performance import (
    Performance,
    sample_script,
    static_expression,
)
from factorportrait.data.synthetic.rigs import phone_camera, studio_rig, sweep_cameras
from factorportrait.geometry import Cameras, hold
from factorportrait.render import Meshes, render

RENDER_CHUNK = 16  # frames per renderer call (bounds memory; results do not depend on it)


@dataclass(frozen=True, eq=False)
class RenderedClip:
    """A clip ready to write: ``rgb`` and ``normals`` ``uint8 (F, H, W, 3)``, annotations."""

    rgb: Tensor
    normals: Tensor
    annotations: ClipAnnotations


def make_avatar(config: SyntheticConfig, identity_index: int) -> HeadAvatar:
    """The avatar of identity ``identity_index`` (deterministic from the global seed)."""
    return HeadAvatar(AvatarIdentity.sample(identity_seed(config, identity_index)))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clip_controls(spec: ClipSpec, config: SyntheticConfig) -> tuple[Performance, Cameras]:
    """What the avatar does and where the cameras are: ``Performance`` and ``Cameras`` of
    ``config.frames`` frames (float32)."""
    frames, width, height = config.frames, config.width, config.height
    times = torch.arange(frames, dtype=torch.float64) / config.fps  # seconds
    seed = derive_seed(config.seed, spec.identity_index, spec.kind, spec.clip_index)
    generator = _generator(seed)  # studio: one per take, so every view sees the same draws
    if spec.kind == "phone":
        cameras = phone_camera(frames, width, height, generator)
        performance = sample_script(frames / config.fps, generator).evaluate(times)
    elif spec.kind == "studio":
        performance = sample_script(frames / config.fps, generator).evaluate(times)
        rig = studio_rig(config.studio_views, width, height, generator)
        cameras = hold(rig[spec.view], frames)
    elif spec.kind == "viewsweep":
        performance = Performance.static(static_expression(generator), frames)
        cameras = sweep_cameras(frames, width, height, generator)
    elif spec.kind == "dynamicsweep":
        capture = sample_script(config.capture_duration, _generator(
            derive_seed(config.seed, spec.identity_index, "capture")))
        start = float(torch.rand((), generator=generator, dtype=torch.float64)) * (
            capture.duration - frames / config.fps)
        performance = capture.evaluate(start + times)
        cameras = sweep_cameras(frames, width, height, generator)
    else:
        raise ValueError(f"unknown clip kind {spec.kind!r}")
    return performance, cameras


def render_frames(avatar: HeadAvatar, performance: Performance, K: Tensor, c2w: Tensor,
                  height: int, width: int, supersample: int = 1,
                  normals_expression: bool = True) -> tuple[Tensor, Tensor]:
    """Render the posed avatar: ``K (F,3,3)``, ``c2w (F,4,4)`` → RGB and normal maps, each
    ``uint8 (F, H, W, 3)`` (docs/rendering.md: white background, black normal background).
    ``normals_expression=False``: the normal maps show a neutral face in the same head pose
    (:class:`~factorportrait.data.synthetic.config.SyntheticConfig`)."""
    verts = avatar.pose(performance.expression, performance.head_rotation,
                        performance.head_translation)  # (F, V, 3)
    neutral = None if normals_expression else avatar.pose(
        torch.zeros_like(performance.expression), performance.head_rotation,
        performance.head_translation)
    rgb, normals = [], []
    for start in range(0, len(verts), RENDER_CHUNK):
        part = slice(start, start + RENDER_CHUNK)
        cameras = (K[part], c2w[part])
        outputs = ("rgb", "normals") if neutral is None else ("rgb",)
        maps = render(Meshes(verts[part], avatar.faces, avatar.vertex_colors), cameras,
                      height, width, outputs=outputs, supersample=supersample)
        if neutral is not None:
            maps["normals"] = render(Meshes(neutral[part], avatar.faces, avatar.vertex_colors),
                                     cameras, height, width, outputs=("normals",),
                                     supersample=supersample)["normals"]
        rgb.append(to_uint8(maps["rgb"]))
        normals.append(to_uint8(maps["normals"]))
    return torch.cat(rgb), torch.cat(normals)


def to_uint8(images: Tensor) -> Tensor:
    """``(F, 3, H, W)`` in [0, 1] → ``uint8 (F, H, W, 3)``."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def render_clip(spec: ClipSpec, config: SyntheticConfig, avatar: HeadAvatar | None = None
                ) -> RenderedClip:
    """Controls, frames and annotations of one planned clip. ``avatar``: the identity's avatar
    if already built (``make_avatar``)."""
    avatar = avatar if avatar is not None else make_avatar(config, spec.identity_index)
    performance, cameras = clip_controls(spec, config)
    rgb, normals = render_frames(avatar, performance, cameras.K, cameras.c2w, config.height,
                                 config.width, config.supersample, config.normals_expression)
    annotations = ClipAnnotations(
        K=cameras.K, c2w=cameras.c2w, head_rotation=performance.head_rotation,
        head_translation=performance.head_translation, expression=performance.expression,
        expression_names=EXPRESSION_NAMES, betas=identity_to_vector(avatar.identity),
        width=config.width, height=config.height, fps=config.fps, kind=spec.kind)
    return RenderedClip(rgb, normals, annotations)


def render_from_annotations(annotations: ClipAnnotations, frames: Sequence[int] | None = None,
                            supersample: int = 1, normals_expression: bool = True
                            ) -> tuple[Tensor, Tensor]:
    """Re-render frames of a synthetic clip from its annotations alone (the avatar from
    ``betas``, then ``expression``, head pose, ``K``, ``c2w``): RGB and normal maps, each
    ``uint8 (len(frames), H, W, 3)``; ``frames=None``: all. Use the dataset's
    ``supersample`` and ``normals_expression`` (``synthetic.json``) to reproduce its
    videos."""
    index = slice(None) if frames is None else torch.as_tensor(list(frames), dtype=torch.long)
    performance = Performance(annotations.expression[index], annotations.head_rotation[index],
                              annotations.head_translation[index])
    return render_frames(avatar_from_annotations(annotations), performance,
                         annotations.K[index], annotations.c2w[index], annotations.height,
                         annotations.width, supersample, normals_expression)
