"""``tools/benchmark.py render``: normal maps per second of the built-in torch rasteriser on
the procedural head avatar, against the frames per second a training step consumes.

For each device (CPU, and CUDA when available) and resolution, ``--frames`` posed avatar
frames (a head turn with changing expressions, orbiting camera) are rendered as normal maps in
one batched call; throughput is ``frames / median seconds``. Training consumption is
``batch * frames_per_sample / seconds_per_step`` (defaults: the tiny config, 4 x 13 frames at
0.57 s per step on this CPU, about 91 frames/s). ``ratio`` = normal maps per second / frames
consumed per second: above 1, rendering on the fly keeps up with training; below 1, render
once and cache the normal-map latents.
"""

from __future__ import annotations

import argparse
import math

import torch

from factorportrait.benchmarks.common import format_table, median_seconds
from factorportrait.body import AvatarIdentity, HeadAvatar
from factorportrait.render import MeshRenderer, Meshes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512],
                        help="square image sizes, pixels")
    parser.add_argument("--frames", type=int, default=13, help="frames per batched call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", nargs="+", default=["auto"],
                        help="'auto' = cpu plus cuda when available")
    parser.add_argument("--supersample", type=int, default=1)
    parser.add_argument("--cull-backfaces", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="avatar identity")
    parser.add_argument("--batch", type=int, default=4, help="training batch (samples)")
    parser.add_argument("--frames-per-sample", type=int, default=13)
    parser.add_argument("--seconds-per-step", type=float, default=0.57,
                        help="measured training step time of the tiny config")


def orbit_cameras(frames: int, size: int, distance: float = 0.7, fov_degrees: float = 30.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``K (3, 3)`` and ``c2w (frames, 4, 4)``: a +-30 degree arc in front of the head,
    looking at the origin (OpenCV world, up = -y)."""
    focal = 0.5 * size / math.tan(math.radians(fov_degrees) / 2)
    K = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])
    angles = torch.linspace(-math.pi / 6, math.pi / 6, frames)
    centers = torch.stack([distance * angles.sin(), torch.full_like(angles, -0.03),
                           -distance * angles.cos()], -1)
    forward = torch.nn.functional.normalize(-centers, dim=-1)
    right = torch.nn.functional.normalize(
        torch.linalg.cross(forward, torch.tensor([0.0, -1.0, 0.0]).expand_as(forward)), dim=-1)
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4).repeat(frames, 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, down, forward, centers
    return K, c2w


def _avatar_frames(avatar: HeadAvatar, frames: int) -> torch.Tensor:
    """``(frames, V, 3)``: a head turn with a smile and a blink."""
    t = torch.linspace(0, 1, frames)
    expression = torch.zeros(frames, avatar.num_expressions)
    expression[:, avatar.EXPRESSION_NAMES.index("smile")] = t
    expression[:, avatar.EXPRESSION_NAMES.index("blink_left")] = (t * math.pi).sin()
    rotation = torch.stack([0.1 * t, 0.6 * (t - 0.5), torch.zeros_like(t)], -1)
    return avatar.pose(expression, rotation, torch.zeros(frames, 3))


def _devices(names: list[str]) -> list[torch.device]:
    if names == ["auto"]:
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available()
                                        else [])
    return [torch.device(name) for name in names]


def run(args: argparse.Namespace) -> dict:
    consumed = args.batch * args.frames_per_sample / args.seconds_per_step
    avatar = HeadAvatar(AvatarIdentity.sample(args.seed))
    verts = _avatar_frames(avatar, args.frames)
    rows = []
    for device in _devices(args.devices):
        meshes = Meshes(verts.to(device), avatar.faces.to(device),
                        avatar.vertex_colors.to(device))
        for size in args.resolutions:
            K, c2w = orbit_cameras(args.frames, size)
            renderer = MeshRenderer(size, size, supersample=args.supersample,
                                    cull_backfaces=args.cull_backfaces)
            cameras = (K.to(device), c2w.to(device))
            seconds = median_seconds(lambda: renderer(meshes, cameras, outputs=("normals",)),
                                     device, args.repeats)
            fps = args.frames / seconds
            rows.append({"device": device.type, "resolution": size,
                         "normal_maps_per_s": round(fps, 1),
                         "ms_per_frame": round(1e3 * seconds / args.frames, 2),
                         "ratio_to_training": round(fps / consumed, 3)})
    pose_seconds = median_seconds(lambda: _avatar_frames(avatar, args.frames),
                                  torch.device("cpu"), args.repeats)
    print(format_table(rows, ["device", "resolution", "normal_maps_per_s", "ms_per_frame",
                              "ratio_to_training"]))
    print(f"avatar: {len(avatar.neutral_vertices)} vertices, {len(avatar.faces)} triangles; "
          f"posing {1e3 * pose_seconds / args.frames:.2f} ms/frame (cpu)")
    print(f"training consumes {consumed:.1f} frames/s ({args.batch} x {args.frames_per_sample}"
          f" frames per {args.seconds_per_step} s step); ratio > 1 keeps up on the fly")
    return {"threads": torch.get_num_threads(), "frames_per_call": args.frames,
            "supersample": args.supersample, "cull_backfaces": args.cull_backfaces,
            "triangles": int(len(avatar.faces)), "vertices": int(len(avatar.neutral_vertices)),
            "pose_ms_per_frame": round(1e3 * pose_seconds / args.frames, 3),
            "training_frames_per_s": round(consumed, 2), "results": rows}
