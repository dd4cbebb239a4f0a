"""``tools/benchmark.py track``: face tracking against rendering, frames per second.

Tracks a real photo (``skimage.data.astronaut()``, turned and zoomed a little every frame)
at ``--size`` pixels for ``--frames`` frames — detection, the 478-point face mesh, the pose
fit and the smoothing, after MediaPipe's graphs have started — and times the pipeline
rendering a video of the same length from it (``--checkpoint``, default the shipped demo
model, at its training size, ``--steps`` denoising steps with the default guidance). Reports
both rates and their ratio: above 1, tracking a driving video costs less than rendering it.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from factorportrait.benchmarks.common import format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=512, help="video side, pixels")
    parser.add_argument("--frames", type=int, default=25, help="video frames, 4k+1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", default="checkpoints/demo")
    parser.add_argument("--steps", type=int, default=35)


def _video(size: int, frames: int) -> torch.Tensor:
    import skimage.data

    from factorportrait.tracking.crop import FaceBoxes, crop_faces

    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float()
    t = torch.linspace(0, 1, frames)
    boxes = FaceBoxes(torch.tensor([224.0, 150.0]).expand(frames, 2), 360.0 / (1 + 0.1 * t),
                      torch.deg2rad(10 * torch.sin(2 * math.pi * t)))
    crops = crop_faces(photo.expand(frames, -1, -1, -1), boxes, size, roll_normalise=True)
    return crops.round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous()


def run(args: argparse.Namespace) -> dict:
    from factorportrait.io import write_video
    from factorportrait.pipeline import FactorPortraitPipeline
    from factorportrait.tracking import FaceTracker

    video = _video(args.size, args.frames)
    with FaceTracker() as tracker:
        tracker.track(video[:1])  # start the graphs
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            face = tracker.track(video)
            seconds.append(time.perf_counter() - start)
    track_seconds = sorted(seconds)[len(seconds) // 2]
    pipe = FactorPortraitPipeline.from_pretrained(args.checkpoint)
    folder = Path(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "drive.mp4"
        write_video(path, video, fps=25)
        reference = video[0]
        kwargs = dict(mode="driving", driving_video=path, num_steps=args.steps, progress=False)
        pipe(reference, **{**kwargs, "num_steps": 1})  # warm-up
        renders, faces = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            pipe(reference, **kwargs)
            renders.append(time.perf_counter() - start)
            faces.append(pipe.timings["faces"])
    render_seconds = sorted(renders)[len(renders) // 2]
    track_fps, render_fps = args.frames / track_seconds, args.frames / render_seconds
    report = {
        "device": "cpu", "threads": torch.get_num_threads(),
        "config": {"size": args.size, "frames": args.frames, "checkpoint": str(folder),
                   "render_size": list(pipe.trained_size or ()), "steps": args.steps},
        "tracking_fps": round(track_fps, 2), "render_fps": round(render_fps, 3),
        "tracking_to_render_ratio": round(track_fps / render_fps, 1),
        "faces_step_seconds": round(sorted(faces)[len(faces) // 2], 3),
        "render_seconds": round(render_seconds, 3),
        "face_box_px": round(face.report.face_px, 1),
    }
    rows = [("tracking at %d px (frames/s)" % args.size, report["tracking_fps"]),
            ("rendering the same %d frames (frames/s)" % args.frames, report["render_fps"]),
            ("tracking / rendering", report["tracking_to_render_ratio"]),
            ("the render's faces step (s)", report["faces_step_seconds"])]
    print(format_table([{"measure": name, "value": value} for name, value in rows],
                       ["measure", "value"]))
    return report
