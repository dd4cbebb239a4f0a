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
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from factorportrait.demo.heldout import HeldoutClip
from factorportrait.diffusion.guidance import Guidance
from factorportrait.evaluation.metrics import psnr, ssim
from factorportrait.geometry.rays import dit_rays
from factorportrait.models.conditions import PortraitConditions

LOG = logging.getLogger(__name__)
ROWS = ("model", "(i) reference repeated", "(ii) frozen pose + camera", "(iii) no expression",
        "VAE ceiling")


@dataclass(frozen=True)
class SampleSettings:
    steps: int
    guidance: Guidance | None
    seed: int


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
    return PortraitConditions(reference_latent=reference_latent, normal_latents=normal_latents,
                              rays=rays[None], expression=codes[None]).to(pipeline.device)


def generate(pipeline, conditions: PortraitConditions, settings: SampleSettings) -> Tensor:
    latents = pipeline.denoise(conditions, num_steps=settings.steps, guidance=settings.guidance,
                               seed=settings.seed, progress=False)
    return pipeline.decode(latents)


def frame_metrics(prediction: Tensor, target: Tensor) -> tuple[float, float]:
    """Mean PSNR and SSIM over frames of two ``uint8 (F, H, W, 3)`` videos."""
    a, b = prediction.permute(0, 3, 1, 2).float(), target.permute(0, 3, 1, 2).float()
    return psnr(a, b, 255.0).mean().item(), ssim(a, b, 255.0).mean().item()


def evaluate_clip(pipeline, clip: HeldoutClip, settings: SampleSettings
                  ) -> tuple[dict[str, tuple[float, float]], dict[str, Tensor]]:
    """Metrics of every row (module docstring) on one clip, over every frame but the
    reference (frame 0), and the videos behind them."""
    reference = 0
    full = clip_conditions(pipeline, clip, reference)
    videos = {
        ROWS[0]: generate(pipeline, full, settings),
        ROWS[1]: clip.rgb[[reference] * len(clip)],
        ROWS[2]: generate(pipeline, clip_conditions(pipeline, clip, reference,
                                                    freeze_pose=True), settings),
        ROWS[3]: generate(pipeline, replace(full, expression=torch.zeros_like(full.expression)),
                          settings),
    }
    with torch.no_grad():
        latents = pipeline.vae.encode(to_unit(clip.rgb).permute(1, 0, 2, 3)[None])
    videos[ROWS[4]] = pipeline.decode(latents.to(pipeline.device))
    scored = [i for i in range(len(clip)) if i != reference]  # the reference frame is given
    return {row: frame_metrics(video[scored], clip.rgb[scored])
            for row, video in videos.items()}, videos


def metric_table(pipeline, clips: list[HeldoutClip], settings: SampleSettings
                 ) -> tuple[dict, dict[str, Tensor]]:
    """Mean PSNR / SSIM per row over ``clips`` (and per clip), and the first clip's videos
    (for the contact sheet)."""
    per_clip, first_videos = {}, {}
    for clip in clips:
        metrics, videos = evaluate_clip(pipeline, clip, settings)
        first_videos = first_videos or videos
        per_clip[clip.id] = {row: {"psnr": p, "ssim": s} for row, (p, s) in metrics.items()}
        LOG.info("%s: model %.2f dB, reference %.2f dB", clip.id, metrics[ROWS[0]][0],
                 metrics[ROWS[1]][0])
    mean = {row: {key: sum(c[row][key] for c in per_clip.values()) / len(per_clip)
                  for key in ("psnr", "ssim")} for row in ROWS}
    model = mean[ROWS[0]]["psnr"]
    table = {"clips": len(clips), "frames": len(clips[0]), "steps": settings.steps,
             "guidance": None if settings.guidance is None else settings.guidance.mode,
             "mean": mean, "per_clip": per_clip,
             "model_beats": {row: model > mean[row]["psnr"] for row in ROWS[1:4]}}
    return table, first_videos


def format_table(table: dict) -> str:
    header = (f"Held-out DynamicSweep clips: {table['clips']} x {table['frames']} frames, "
              f"{table['steps']} denoising steps, guidance {table['guidance']}")
    lines = [header, f"{'':30s} {'PSNR (dB)':>10s} {'SSIM':>8s}"]
    for row in ROWS:
        values = table["mean"][row]
        lines.append(f"{row:30s} {values['psnr']:10.2f} {values['ssim']:8.4f}")
    beats = table["model_beats"]
    lines.append("model beats on PSNR: " + ", ".join(
        f"{row.split(')')[0] + ')'} {'yes' if won else 'NO'}" for row, won in beats.items()))
    return "\n".join(lines)


def write_json(path: str | Path, table: dict) -> None:
    from factorportrait.io.atomic import atomic_write_bytes

    atomic_write_bytes(Path(path), json.dumps(table, indent=1).encode())
