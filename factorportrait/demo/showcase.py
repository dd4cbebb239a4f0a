"""``make demo``: the shipped demo model on a held-out identity (docs/demo.md).

Renders, through the public pipeline steps, with a held-out avatar as the reference and the
other held-out avatar's phone clip as the driving performance (cross-identity reenactment):

    (a) a_orbit.mp4            driving_with_camera: an orbit around the head, driving pose and
                               expression
    (b) b_expression_only.mp4  expression_only: the driver's expression, reference pose/camera
    (c) c_pose_only.mp4        pose_only: the driver's head pose, reference expression/camera

then the metric table of :mod:`factorportrait.demo.evaluate` and ``contact_sheet.png`` (per
block: reference, conditions, generated frames, ground truth where one exists).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from factorportrait.demo.config import checkpoint_dir, work_dir
from factorportrait.demo.evaluate import (
    ROWS,
    SampleSettings,
    format_table,
    metric_table,
    write_json,
)
from factorportrait.demo.heldout import (
    HeldoutClip,
    heldout_identities,
    heldout_spec,
    render_heldout,
)
from factorportrait.demo.train import synthetic_config
from factorportrait.geometry.cameras import Cameras

LOG = logging.getLogger(__name__)
SHEET_COLUMNS = 8  # frames shown per row
SHEET_SCALE = 2  # nearest-neighbour upscaling of the 64 px frames


def orbit_about(camera: Cameras, target: Tensor, frames: int, degrees: float = 360.0
                ) -> Cameras:
    """``frames`` cameras: ``camera`` (one) carried around the vertical (world y) axis through
    ``target (3,)`` by ``degrees`` in equal steps, the first one being ``camera`` itself."""
    angles = torch.deg2rad(torch.arange(frames, dtype=torch.float64) * degrees / frames)
    cos, sin = torch.cos(angles), torch.sin(angles)
    rotation = torch.zeros(frames, 3, 3, dtype=torch.float64)
    rotation[:, 0, 0], rotation[:, 0, 2], rotation[:, 1, 1] = cos, sin, 1.0
    rotation[:, 2, 0], rotation[:, 2, 2] = -sin, cos
    about = torch.eye(4, dtype=torch.float64).repeat(frames, 1, 1)
    target = target.double()
    about[:, :3, :3], about[:, :3, 3] = rotation, target - rotation @ target
    c2w = about @ camera.c2w.double()[0]
    return Cameras(camera.K[[0] * frames], c2w.to(camera.c2w.dtype), camera.width,
                   camera.height)


def sample_settings(config: DictConfig, steps: int | None) -> SampleSettings:
    from factorportrait.diffusion.guidance import Guidance

    render = config.render
    guidance = None if render.guidance is None else Guidance(render.guidance,
                                                             render.guidance_scale)
    return SampleSettings(steps or render.steps, guidance, render.seed)


def load_components(checkpoints: Path):
    """The shipped pipeline (DiT + VAE) and expression encoder (as a code source)."""
    from factorportrait.expression.codes import EncoderCodeSource
    from factorportrait.models.expression_encoder import ExpressionEncoder
    from factorportrait.pipeline import FactorPortraitPipeline

    if not (checkpoints / "model.safetensors").is_file():
        raise FileNotFoundError(f"no demo checkpoint in {checkpoints}: run `make demo-train` "
                                "(or check out checkpoints/demo/ from the repository)")
    pipeline = FactorPortraitPipeline.from_pretrained(checkpoints)
    return pipeline, EncoderCodeSource(ExpressionEncoder.from_pretrained(checkpoints))


def render_showcase(pipeline, encoder, config: DictConfig, settings: SampleSettings,
                    out: Path) -> list[tuple[str, list[Tensor]]]:
    """Write the three demo videos; return the contact-sheet blocks ``(title, rows)``."""
    from factorportrait.data.synthetic import make_avatar
    from factorportrait.inference.controls import render_plan_normals
    from factorportrait.inference.mesh_sources import AvatarMeshSource
    from factorportrait.io.video import write_video

    synth, size, frames = synthetic_config(config), config.size, config.render.frames
    subject, driver = heldout_identities(synth)[0], heldout_identities(synth)[-1]
    source = render_heldout(synth, heldout_spec(synth, subject, "phone", 0), size, encoder)
    driving = render_heldout(synth, heldout_spec(synth, driver, "phone", 0), size,
                             encoder).window(0, frames)
    index = source.frontal_frame()
    reference_image = source.rgb[index].permute(2, 0, 1).float() / 127.5 - 1
    reference = source.track[[index]]
    pipeline.mesh_source = AvatarMeshSource(make_avatar(synth, subject))
    orbit = orbit_about(reference.cameras, reference.head_translation[0], frames)
    demos = [("a_orbit", "driving_with_camera", orbit, "(a) orbit + driving pose/expression"),
             ("b_expression_only", "expression_only", None, "(b) expression only"),
             ("c_pose_only", "pose_only", None, "(c) pose only")]
    blocks = []
    for name, mode, trajectory, title in demos:
        start = time.perf_counter()
        request = pipeline.check_inputs(reference_image, mode=mode, control_track=driving.track,
                                        camera_trajectory=trajectory, reference=reference,
                                        num_frames=frames, height=size, width=size,
                                        fps=config.render.fps, output_path=out / f"{name}.mp4")
        plan = pipeline.plan(request)
        conditions = pipeline.encode_conditions(request, plan)
        latents = pipeline.denoise(conditions, num_steps=settings.steps,
                                   guidance=settings.guidance, seed=settings.seed,
                                   progress=False)
        video = pipeline.decode(latents)
        write_video(request.output_path, video, fps=request.fps)
        normals = render_plan_normals(plan, pipeline.mesh_source, size, size)
        condition_row = (driving.rgb if mode == "expression_only"
                         else (normals.permute(0, 2, 3, 1) * 255).round().byte())
        label = "driver (codes)" if mode == "expression_only" else "normal maps"
        blocks.append((title, [(label, condition_row), ("generated", video)], source.rgb[index]))
        LOG.info("%s: %s (%.1f s)", title, request.output_path, time.perf_counter() - start)
    return blocks


def evaluation_clips(config: DictConfig, encoder, count: int, frames: int
                     ) -> list[HeldoutClip]:
    """``count`` held-out DynamicSweep clips (alternating identities), first ``frames``."""
    synth = synthetic_config(config)
    identities = heldout_identities(synth)
    specs = [heldout_spec(synth, identities[i % len(identities)], "dynamicsweep",
                          i // len(identities)) for i in range(count)]
    if frames > synth.frames:
        raise ValueError(f"evaluation frames ({frames}) exceed the clips' {synth.frames}")
    return [render_heldout(synth, spec, config.size, encoder).window(0, frames)
            for spec in specs]


def write_cases(root: Path, clips: list[HeldoutClip], videos: list[dict[str, Tensor]],
                fps: float) -> None:
    """The evaluated clips as a results folder for ``tools/evaluate.py``
    (:mod:`factorportrait.evaluation.results`): per clip, one self-reenactment case of frames
    1.. (frame 0 is the given reference) for the model and each of its three baselines."""
    from factorportrait.evaluation.results import write_case

    for clip, rows in zip(clips, videos):
        for index, row in enumerate(ROWS[:4]):
            write_case(root, f"{clip.id}_{index}_{_slug(row)}", rows[row][1:], fps,
                       reference=clip.rgb[0], ground_truth=clip.rgb[1:])
    print(f"wrote {len(clips) * 4} results cases to {root} (python tools/evaluate.py {root})")


def _slug(row: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in row.split(") ")[-1]).strip("_")


def contact_sheet(blocks: list, path: Path) -> None:
    """One PNG: per block a title line, then rows (label, frames); the reference image in
    each block's first column."""
    from PIL import Image, ImageDraw

    from factorportrait.io.atomic import atomic_output

    cell = blocks[0][1][0][1].shape[1] * SHEET_SCALE
    label_width, title_height = 120, 16
    rows = sum(len(b[1]) for b in blocks)
    width = label_width + cell * (SHEET_COLUMNS + 1)
    sheet = Image.new("RGB", (width, rows * cell + (len(blocks) + 1) * title_height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((label_width + 4, 2), "reference", fill="black")
    draw.text((label_width + cell + 4, 2), f"{SHEET_COLUMNS} frames, evenly spaced",
              fill="black")
    y = title_height
    for title, block_rows, reference in blocks:
        draw.text((4, y + 2), title, fill="black")
        y += title_height
        for row, (label, frames) in enumerate(block_rows):
            draw.text((4, y + cell // 2 - 6), label, fill="black")
            if row == 0:
                sheet.paste(_image(reference, cell), (label_width, y))
            picks = np.linspace(0, len(frames) - 1, SHEET_COLUMNS).round().astype(int)
            for column, frame in enumerate(picks):
                sheet.paste(_image(frames[frame], cell), (label_width + cell * (column + 1), y))
            y += cell
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        sheet.save(tmp, format="PNG")


def _image(frame: Tensor, cell: int):
    from PIL import Image

    return Image.fromarray(frame.numpy()).resize((cell, cell), Image.NEAREST)


def run_demo(config: DictConfig, args: argparse.Namespace) -> int:
    """``tools/demo.py render`` / ``evaluate`` (see the module and tools/demo.py docstrings)."""
    torch.set_num_threads(config.threads)  # a command: it owns the process
    checkpoints = Path(args.checkpoints) if args.checkpoints else checkpoint_dir(config)
    out = Path(args.out) if args.out else work_dir(config) / "render"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pipeline, encoder = load_components(checkpoints)
    settings = sample_settings(config, args.steps)
    frames = args.frames or config.render.frames
    if (frames - 1) % 4 or frames < 5:
        raise ValueError(f"--frames must be 4k + 1 >= 5, got {frames}")
    count = args.clips or config.render.evaluate_clips
    blocks = []
    if args.command == "render":
        blocks = render_showcase(pipeline, encoder, config, settings, out)
    clips = evaluation_clips(config, encoder, count, frames)
    table, all_videos = metric_table(pipeline, clips, settings, encoder.encoder)
    videos = all_videos[0]
    table["seconds"] = round(time.perf_counter() - started, 1)
    print(format_table(table))
    write_json(out / "metrics.json", table)
    if args.json:
        write_json(args.json, table)
    if args.cases:
        write_cases(Path(args.cases), clips, all_videos, config.render.fps)
    if args.command == "render":
        normals = clips[0].normals
        reference = clips[0].rgb[0]
        blocks.append((f"held-out DynamicSweep {clips[0].id}", [
            ("normal maps", normals), ("generated", videos[ROWS[0]]),
            ("ground truth", clips[0].rgb)], reference))
        contact_sheet(blocks, out / "contact_sheet.png")
        print(f"wrote {', '.join(sorted(p.name for p in out.glob('*.mp4')))}, "
              f"contact_sheet.png and metrics.json to {out}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0
