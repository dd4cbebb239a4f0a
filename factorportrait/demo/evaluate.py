"""The demo's evidence that the controls work: PSNR / SSIM on held-out DynamicSweep clips.

For each clip (an identity never trained on; a camera sweeping around a moving, talking head)
the model generates the clip's first ``frames`` frames from its first frame (the usual
self-reenactment protocol: frame 0 is the reference, frames 1.. are scored), with the clip's
own cameras (Plücker rays), normal maps and expression codes. Beside it, in the same
run and from the same noise:

    (i)   reference      the reference frame repeated (no model)
    (ii)  frozen pose    the model with pose and camera frozen at the reference: the reference
                         camera's rays and the reference frame's normal map for every frame
    (iii) no expression  the model with zero expression codes (its learned null)
    VAE ceiling          the ground truth through the VAE (what any generated video is held to)

The conditions are built from the same pieces as training (dataset normal maps, not a fresh
rendering), so a difference between rows is the conditions' effect alone.

Columns: PSNR and SSIM, and the per-control measures of
:mod:`factorportrait.evaluation.controls`, read from the generated frames alone: pose (the
silhouette's IoU with the ground truth's), expression (RMSE between the expression parameters
the trained encoder reads from the generated face and from the ground-truth face), appearance
(colour distance to the ground-truth frame), identity margin (how much nearer the frames'
colours are to their own reference than to the other identities' references; with one
identity evaluated there is none).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from factorportrait.demo.heldout import HeldoutClip
from factorportrait.diffusion.flow_matching import null_conditions
from factorportrait.diffusion.guidance import Guidance
from factorportrait.evaluation.controls import (
    colour_distance,
    colour_quantiles,
    expression_rmse,
    identity_margin,
    read_expression,
    silhouette_iou,
)
from factorportrait.evaluation.metrics import psnr, ssim
from factorportrait.geometry.head_pose import source_and_driving_poses
from factorportrait.geometry.rays import dit_rays
from factorportrait.models.conditions import PortraitConditions

LOG = logging.getLogger(__name__)
ROWS = ("model", "(i) reference repeated", "(ii) frozen pose + camera", "(iii) no expression",
        "VAE ceiling")


@dataclass(frozen=True)
class SampleSettings:
    """Denoising steps, guidance and seed; ``drop``: conditions every sample is given as its
    null (a model trained without them, e.g. the ablation without normal maps)."""

    steps: int
    guidance: Guidance | None
    seed: int
    drop: tuple[str, ...] = ()


def to_unit(frames: Tensor) -> Tensor:
    """``uint8 (F, H, W, 3)`` -> float ``(F, 3, H, W)`` in [-1, 1]."""
    return frames.permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def clip_conditions(pipeline, clip: HeldoutClip, reference: int, *, freeze_pose: bool = False
                    ) -> PortraitConditions:
    """The DiT conditions of ``clip`` generated from its frame ``reference``."""
    vae, frames = pipeline.vae, len(clip)
    size = clip.rgb.shape[1]
    normals = clip.normals[[reference] * frames] if freeze_pose else clip.normals
    cameras = clip.cameras[[reference] * frames] if freeze_pose else clip.cameras
    normal_latents = vae.encode(to_unit(normals).permute(1, 0, 2, 3)[None])
    reference_latent = vae.encode_image(to_unit(clip.rgb[[reference]]))
    codes = clip.track.expression_codes.float()
    rays = dit_rays(clip.cameras[[reference]], cameras, size, size)
    track = clip.track
    poses = [reference] * frames if freeze_pose else list(range(frames))
    head_pose = source_and_driving_poses(  # DeX head poses: the reference's, then each frame's
        track.head_rotation[reference], track.head_translation[reference],
        clip.cameras[[reference]], track.head_rotation[poses], track.head_translation[poses],
        cameras)
    landmarks = None if track.landmarks is None else track.landmarks[None]
    return PortraitConditions(reference_latent=reference_latent, normal_latents=normal_latents,
                              rays=rays[None], expression=codes[None], head_pose=head_pose[None],
                              landmarks=landmarks).to(pipeline.device)


def generate(pipeline, conditions: PortraitConditions, settings: SampleSettings) -> Tensor:
    if settings.drop:
        conditions = null_conditions(conditions, settings.drop)
    latents = pipeline.denoise(conditions, num_steps=settings.steps, guidance=settings.guidance,
                               seed=settings.seed, progress=False)
    return pipeline.decode(latents)


HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "pose_iou": True, "expression_rmse": False,
                    "appearance": False, "identity_margin": True}


def frame_metrics(prediction: Tensor, target: Tensor) -> tuple[float, float]:
    """Mean PSNR and SSIM over frames of two ``uint8 (F, H, W, 3)`` videos."""
    a, b = prediction.permute(0, 3, 1, 2).float(), target.permute(0, 3, 1, 2).float()
    return psnr(a, b, 255.0).mean().item(), ssim(a, b, 255.0).mean().item()


def control_metrics(video: Tensor, clip: HeldoutClip, readout) -> dict[str, float]:
    """Image quality and per-control accuracy of ``video`` against ``clip`` (same frames),
    from the generated pixels alone (:mod:`factorportrait.evaluation.controls`): pose
    (silhouette IoU), expression (RMSE between the encoder's parameter readout of the
    generated and of the ground-truth frames, as AED compares one network's readouts; skipped
    without ``readout``), appearance (colour distance to the ground-truth frame)."""
    value, structure = frame_metrics(video, clip.rgb)
    metrics = {"psnr": value, "ssim": structure,
               "pose_iou": float(silhouette_iou(video, clip.normals).mean()),
               "appearance": float(colour_distance(colour_quantiles(video),
                                                   colour_quantiles(clip.rgb)).mean())}
    if readout is not None:
        generated = read_expression(readout, video, clip.boxes)
        truth = read_expression(readout, clip.rgb, clip.boxes)
        metrics["expression_rmse"] = float(expression_rmse(generated, truth).mean())
    return metrics


def evaluate_clip(pipeline, clip: HeldoutClip, settings: SampleSettings, readout=None
                  ) -> tuple[dict[str, dict[str, float]], dict[str, Tensor]]:
    """Metrics of every row (module docstring) on one clip, over every frame but the
    reference (frame 0), and the videos behind them. ``readout``: the trained
    :class:`~factorportrait.models.expression_encoder.ExpressionEncoder` whose parameter head
    scores expression (None: no expression column)."""
    reference = 0
    full = clip_conditions(pipeline, clip, reference)
    videos = {
        ROWS[0]: generate(pipeline, full, settings),
        ROWS[1]: clip.rgb[[reference] * len(clip)],
        ROWS[2]: generate(pipeline, clip_conditions(pipeline, clip, reference,
                                                    freeze_pose=True), settings),
        ROWS[3]: generate(pipeline, null_conditions(full, {"expression"}),  # codes, landmarks
                          settings),
    }
    with torch.no_grad():
        latents = pipeline.vae.encode(to_unit(clip.rgb).permute(1, 0, 2, 3)[None])
    videos[ROWS[4]] = pipeline.decode(latents.to(pipeline.device))
    scored = clip.window(reference + 1, len(clip) - 1)  # the reference frame is given
    return {row: control_metrics(video[reference + 1:], scored, readout)
            for row, video in videos.items()}, videos


def _identity_margins(clips: list[HeldoutClip], videos: list[dict[str, Tensor]]
                      ) -> list[dict[str, float]]:
    """Per clip and row: the generated frames' appearance margin between the references of
    other identities and their own (controls.identity_margin)."""
    margins = []
    for clip, rows in zip(clips, videos):
        others = [c.rgb[0] for c in clips if c.identity_index != clip.identity_index]
        margins.append({row: identity_margin(video[1:], clip.rgb[0], others)["margin"]
                        if others else None for row, video in rows.items()})
    return margins


def metric_table(pipeline, clips: list[HeldoutClip], settings: SampleSettings, readout=None
                 ) -> tuple[dict, list[dict[str, Tensor]]]:
    """Mean metrics per row over ``clips`` (and per clip), and each clip's videos per row."""
    per_clip, all_videos = {}, []
    for clip in clips:
        metrics, videos = evaluate_clip(pipeline, clip, settings, readout)
        all_videos.append(videos)
        per_clip[clip.id] = metrics
        LOG.info("%s: model %.2f dB, reference %.2f dB", clip.id, metrics[ROWS[0]]["psnr"],
                 metrics[ROWS[1]]["psnr"])
    for clip, margins in zip(clips, _identity_margins(clips, all_videos)):
        for row, margin in margins.items():
            per_clip[clip.id][row]["identity_margin"] = margin
    keys = [key for key, value in next(iter(per_clip.values()))[ROWS[0]].items()
            if value is not None]  # identity_margin needs clips of two identities
    mean = {row: {key: sum(c[row][key] for c in per_clip.values()) / len(per_clip)
                  for key in keys} for row in ROWS}
    model = mean[ROWS[0]]
    beats = {row: {key: (model[key] > mean[row][key]) == HIGHER_IS_BETTER[key]
                   and model[key] != mean[row][key] for key in keys} for row in ROWS[1:4]}
    table = {"clips": len(clips), "frames": len(clips[0]), "steps": settings.steps,
             "guidance": None if settings.guidance is None else settings.guidance.mode,
             "mean": mean, "per_clip": per_clip, "model_beats": beats}
    return table, all_videos


COLUMNS = (("psnr", "PSNR dB", "{:8.2f}"), ("ssim", "SSIM", "{:7.4f}"),
           ("pose_iou", "pose IoU", "{:8.4f}"), ("expression_rmse", "expr RMSE", "{:9.4f}"),
           ("appearance", "appear.", "{:7.4f}"), ("identity_margin", "id margin", "{:9.4f}"))


def format_table(table: dict) -> str:
    header = (f"Held-out DynamicSweep clips: {table['clips']} x {table['frames']} frames, "
              f"{table['steps']} denoising steps, guidance {table['guidance']}")
    present = [c for c in COLUMNS if c[0] in table["mean"][ROWS[0]]]
    arrows = {key: "^" if HIGHER_IS_BETTER[key] else "v" for key, _, _ in present}
    lines = [header, f"{'':28s}" + " ".join(f"{name + arrows[key]:>{len(fmt.format(0.0))}s}"
                                           for key, name, fmt in present)]
    for row in ROWS:
        values = table["mean"][row]
        lines.append(f"{row:28s}" + " ".join(fmt.format(values[key])
                                             for key, _, fmt in present))
    for row, won in table["model_beats"].items():
        better = [key for key, value in won.items() if value]
        worse = [key for key, value in won.items() if not value]
        lines.append(f"model against {row}: better on {', '.join(better) or 'nothing'}"
                     + (f"; not on {', '.join(worse)}" if worse else ""))
    return "\n".join(lines)


def write_json(path: str | Path, table: dict) -> None:
    from factorportrait.evaluation.report import finite_or_none
    from factorportrait.io.atomic import atomic_write_bytes

    atomic_write_bytes(Path(path), json.dumps(finite_or_none(table), indent=1,
                                              allow_nan=False).encode())
