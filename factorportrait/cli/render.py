"""``factorportrait-render``: animate a portrait from the command line (docs/pipeline.md).

Examples::

    factorportrait-render photo.png --checkpoint checkpoints/demo --mode driving \\
        --driving-video drive.mp4 --frames 9 --out out.mp4 [--paste-back]
    factorportrait-render face.png --checkpoint ckpt/ --mode driving \\
        --control-track perf.safetensors --out out.mp4
    factorportrait-render face.png --checkpoint ckpt/ --vae Wan2.1_VAE.pth --mode camera_only \\
        --trajectory orbit --traj degrees=60 --traj easing=ease_in_out --frames 49 --out orbit.mp4
    factorportrait-render face.png --mode mixed --expression-track a.safetensors \\
        --pose-track b.safetensors --trajectory cams.json --avatar-seed 3 --preview sheet.png

``--preview`` writes a contact sheet of the conditions (normal maps, ray maps, trajectory plot)
without loading any weights or sampling.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

from factorportrait.diffusion.guidance import GUIDANCE_MODES
from factorportrait.inference.controls import CONTROL_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factorportrait-render", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", help="reference portrait image")
    parser.add_argument("--mode", default="driving", choices=CONTROL_MODES)
    io = parser.add_argument_group("controls")
    io.add_argument("--driving-video", help="driving video: its face is tracked for the head "
                    "pose and the checkpoint's expression encoder gives the codes (whatever a "
                    "--control-track lacks)")
    io.add_argument("--control-track", help="driving control track (.safetensors)")
    io.add_argument("--expression-track", help="mixed: expression source (clip A)")
    io.add_argument("--pose-track", help="mixed: pose source (clip B)")
    io.add_argument("--reference-track", help="a control track whose --reference-frame holds "
                    "the reference image's camera, pose and expression code")
    io.add_argument("--reference-frame", type=int, default=0)
    io.add_argument("--trajectory", help="preset name (orbit, spiral, arc, dolly, zoom, pan, "
                    "tilt, static) or a camera file (.json, transforms.json, .txt)")
    io.add_argument("--traj", action="append", default=[], metavar="KEY=VALUE",
                    help="preset parameter, e.g. degrees=90 (repeatable)")
    io.add_argument("--normal-maps", help="precomputed normal-map video (the driving pose)")
    io.add_argument("--avatar-seed", type=int, help="render the pose with a HeadAvatar of "
                    "this identity seed")
    io.add_argument("--smplx", help="render the pose with SMPL-X (model file or folder)")
    io.add_argument("--prompt", help="text prompt (needs --text-encoder and --tokenizer)")
    out = parser.add_argument_group("output and sampling")
    out.add_argument("--out", help="output .mp4")
    out.add_argument("--preview", help="write a contact sheet PNG of the conditions and stop")
    out.add_argument("--frames", type=int, help="frame count 4k+1 (default: the sources')")
    out.add_argument("--height", type=int)
    out.add_argument("--width", type=int)
    out.add_argument("--fps", type=float)
    out.add_argument("--crop", default="auto", choices=("auto", "face", "center"),
                     help="reference crop: a portrait around the tracked face, or the centre "
                     "(auto: face, centre with --reference-track)")
    out.add_argument("--paste-back", action="store_true",
                     help="write the frames pasted into the full reference photo")
    out.add_argument("--lossless", action="store_true",
                     help="write --out as exact RGB (libx264rgb -qp 0: bit-exact frames for "
                     "evaluation; fewer players read it)")
    out.add_argument("--evaluation-case", metavar="DIR",
                     help="also write DIR/{generated.mp4,reference.png,driving.mp4}: a "
                     "cross-reenactment case for tools/evaluate.py (needs --driving-video)")
    out.add_argument("--fov", type=float, help="horizontal field of view (degrees) assumed for "
                     "tracked photos and videos (default 40)")
    out.add_argument("--steps", type=int, default=35)
    out.add_argument("--guidance", default="progressive_hybrid", choices=GUIDANCE_MODES)
    out.add_argument("--guidance-scale", type=float, default=2.5)
    out.add_argument("--seed", type=int, default=0)
    out.add_argument("--window-frames", type=int, default=81)
    out.add_argument("--window-overlap", type=int, default=16)
    out.add_argument("--vae-tile", type=int, help="VAE tile size in pixels (multiple of 64)")
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", help="FactorPortrait checkpoint directory")
    model.add_argument("--lora", action="append", default=[], metavar="PATH",
                       help="LoRA adapter (adapter.safetensors) merged into the DiT; repeat "
                            "for several")
    model.add_argument("--lora-scale", action="append", type=float, metavar="S",
                       help="scale of each --lora (repeat once per adapter; default 1)")
    model.add_argument("--vae", help="Wan2.1_VAE.pth (when the checkpoint has no VAE)")
    model.add_argument("--expression-encoder", metavar="DIR",
                       help="expression codes of the driving video from this encoder instead "
                       "of the checkpoint's: an expression-encoder folder or a motion-trainer "
                       "folder (tools/train_motion.py, docs/motion.md)")
    model.add_argument("--pose-encoder", metavar="DIR",
                       help="the driving video's head pose from this motion trainer's pose "
                       "encoder instead of the tracker's landmark fit (docs/motion.md)")
    model.add_argument("--preset", choices=("tiny", "wan_1_3b", "wan_14b"),
                       help="refuse a checkpoint of another architecture")
    model.add_argument("--text-encoder", help="models_t5_umt5-xxl-enc-bf16.pth")
    model.add_argument("--tokenizer", help="google/umt5-xxl tokenizer folder")
    model.add_argument("--device", default="auto")
    model.add_argument("--offload-blocks", type=int, metavar="K",
                       help="low memory: keep K DiT blocks on the device, stream the rest "
                       "from host memory")
    model.add_argument("--sequence-parallel-mode", default="auto",
                       choices=("auto", "ulysses", "allgather"),
                       help="under torchrun --nproc_per_node N the DiT's tokens are split "
                       "over the N ranks (rank 0 writes the video)")
    model.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    return parser


class UsageError(ValueError):
    """A command-line mistake: printed as one ``factorportrait-render: error:`` line, status 2."""


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def trajectory_argument(args: argparse.Namespace) -> Any:
    """``--trajectory`` + ``--traj k=v`` -> what the pipeline takes (a path or (name, params))."""
    if args.trajectory is None:
        if args.traj:
            raise UsageError("--traj needs --trajectory")
        return None
    if Path(args.trajectory).suffix in (".json", ".txt"):
        if args.traj:
            raise UsageError("--traj parameters apply to presets, not camera files")
        return Path(args.trajectory)
    params = {}
    for item in args.traj:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--traj expects KEY=VALUE, got {item!r}")
        params[key.replace("-", "_")] = _value(value)
    return (args.trajectory, params)


def mesh_source(args: argparse.Namespace) -> Optional[Any]:
    from factorportrait.inference.mesh_sources import AvatarMeshSource, SMPLXMeshSource

    if args.avatar_seed is not None and args.smplx is not None:
        raise UsageError("choose one of --avatar-seed and --smplx")
    if args.avatar_seed is not None:
        from factorportrait.body import AvatarIdentity, HeadAvatar
        return AvatarMeshSource(HeadAvatar(AvatarIdentity.sample(seed=args.avatar_seed)))
    if args.smplx is not None:
        from factorportrait.body import SMPLXBody
        return SMPLXMeshSource(SMPLXBody(args.smplx))
    return None


def face_tracker(args: argparse.Namespace) -> Optional[Any]:
    """A :class:`~factorportrait.tracking.FaceTracker` for ``--fov``, or None (the default)."""
    if args.fov is None:
        return None
    from factorportrait.tracking import FaceTracker, TrackerConfig
    return FaceTracker(TrackerConfig(fov_deg=args.fov))


def tracker_or_default(tracker: Optional[Any]) -> Any:
    from factorportrait.tracking import FaceTracker
    return tracker if tracker is not None else FaceTracker()


def render_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's keyword inputs from the command line."""
    from factorportrait.inference.control_track import load_control_track

    reference = None
    if args.reference_track is not None:
        track = load_control_track(args.reference_track)
        if not -len(track) <= args.reference_frame < len(track):
            raise UsageError(f"--reference-frame {args.reference_frame}: the reference track "
                             f"{args.reference_track} has {len(track)} frames (0..."
                             f"{len(track) - 1})")
        reference = track[args.reference_frame]
    return dict(mode=args.mode, camera_trajectory=trajectory_argument(args),
                driving_video=args.driving_video, control_track=args.control_track,
                pose_source=args.pose_track, expression_source=args.expression_track,
                normal_maps=args.normal_maps, reference=reference, num_frames=args.frames,
                height=args.height, width=args.width, fps=args.fps, reference_crop=args.crop)


def encoder_components(args: argparse.Namespace, device: str = "cpu") -> dict[str, Any]:
    """``--expression-encoder`` / ``--pose-encoder`` as pipeline components on ``device``
    (empty when neither is given); a folder that holds neither format is a one-line error."""
    from factorportrait.inference.loading import load_expression_encoder
    from factorportrait.models.expression_encoder import CONFIG_FILE as ENCODER_CONFIG
    from factorportrait.motion.model import CONFIG_FILE as MOTION_CONFIG
    from factorportrait.motion.sources import load_motion_sources

    components: dict[str, Any] = {}
    for flag, name in (("--expression-encoder", "expression_encoder"),
                       ("--pose-encoder", "pose_encoder")):
        value = getattr(args, name)
        if value is None:
            continue
        folder = Path(value)
        if (folder / MOTION_CONFIG).is_file():
            pose, expression = load_motion_sources(folder, device)
            components[name] = pose if name == "pose_encoder" else expression
        elif name == "expression_encoder" and (folder / ENCODER_CONFIG).is_file():
            components[name] = load_expression_encoder(folder, device)
        else:
            wanted = f"{MOTION_CONFIG} (tools/train_motion.py)" + (
                f" or {ENCODER_CONFIG}" if name == "expression_encoder" else "")
            raise UsageError(f"{flag} {value}: expected a folder with {wanted}")
    return components


def resolve_device(name: str) -> str:
    """``--device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``;
    anything else, or CUDA without a GPU, is a usage error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA GPU is available here (use --device "
                             "cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                             "device(s)")
    elif device.type != "cpu":
        raise UsageError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    return str(device)


def check_sampling(args: argparse.Namespace):
    """The sampling options, checked before any weights are read -> the Guidance."""
    from factorportrait.diffusion.guidance import Guidance
    from factorportrait.pipeline import check_windows

    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed must be an integer in [0, 2^63), got {args.seed}")
    if args.offload_blocks is not None and args.offload_blocks < 0:
        raise UsageError(f"--offload-blocks must be >= 0, got {args.offload_blocks}")
    check_windows(args.window_frames, args.window_overlap, args.vae_tile)
    if args.lora_scale is not None and len(args.lora_scale) != len(args.lora):
        raise UsageError(f"--lora-scale: give one per --lora ({len(args.lora)}), got "
                         f"{len(args.lora_scale)}")
    return Guidance(args.guidance, args.guidance_scale)


def run(args: argparse.Namespace) -> int:
    import torch

    from factorportrait.inference.inputs import check_render_inputs
    from factorportrait.pipeline import FactorPortraitPipeline

    inputs, source = render_inputs(args), mesh_source(args)
    tracker = face_tracker(args)
    if args.preview is not None:
        pose_encoder = encoder_components(args).get("pose_encoder")
        from factorportrait.inference.faces import resolve_faces
        from factorportrait.inference.preview import preview_conditions
        request = check_render_inputs(args.reference, **inputs)
        if request.reference_crop == "face" or request.driving_video is not None:
            resolve_faces(request, tracker_or_default(tracker), None, source,
                          pose_encoder=pose_encoder)
        preview_conditions(request, request.mesh_source or source, args.preview)
        print(f"wrote {args.preview}")
        return 0
    if args.checkpoint is None or args.out is None:
        raise UsageError("rendering needs --checkpoint and --out (or --preview to only draw "
                         "the conditions)")
    if args.evaluation_case and (not args.driving_video or args.mode != "driving"):
        raise UsageError("--evaluation-case needs --mode driving and --driving-video (the "
                         "video the result is scored against, as cross-reenactment)")
    if args.evaluation_case and Path(args.evaluation_case).is_file():
        raise UsageError(f"--evaluation-case {args.evaluation_case} is a file; expected a "
                         "folder")
    # Everything cheap first: options, device, the reference image, sources, --out, --fps
    guidance, device = check_sampling(args), resolve_device(args.device)
    ranks = _launched_ranks()
    if ranks > 1 and device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    request = check_render_inputs(args.reference, output_path=args.out,
                                  **with_trained_defaults(inputs, args.checkpoint))
    _check_memory(request, args, device)
    encoders = encoder_components(args, device)
    pipe = FactorPortraitPipeline.from_pretrained(
        args.checkpoint, vae_path=args.vae, preset=args.preset, device=device,
        dtype=getattr(torch, args.dtype), text_encoder_path=args.text_encoder,
        tokenizer_path=args.tokenizer, lora=args.lora, lora_scale=args.lora_scale,
        mesh_source=source, window_frames=args.window_frames,
        window_overlap=args.window_overlap, vae_tile=args.vae_tile, face_tracker=tracker,
        **encoders)
    main_rank = True
    if ranks > 1:  # torchrun: one sequence-parallel group of every rank
        from factorportrait.training.distributed import init_process_group
        init_process_group(torch.device(device))
        pipe.enable_sequence_parallel(mode=args.sequence_parallel_mode)
        main_rank = torch.distributed.get_rank() == 0
    if args.offload_blocks is not None:
        pipe.enable_block_offload(args.offload_blocks, device)
    frames = pipe(args.reference, **inputs, prompt=args.prompt, num_steps=args.steps,
                  guidance=guidance, seed=args.seed, output_path=args.out if main_rank else None,
                  paste_back=args.paste_back, lossless=args.lossless, progress=main_rank)
    if main_rank:
        print(f"wrote {args.out}: {frames.shape[0]} frames, {frames.shape[2]}x"
              f"{frames.shape[1]}" + (f" ({ranks} ranks, sequence parallel)" if ranks > 1
                                      else ""))
        if args.evaluation_case:
            _write_evaluation_case(Path(args.evaluation_case), frames, args, request.fps)
    return 0


def _write_evaluation_case(folder: Path, frames: Any, args: argparse.Namespace,
                           fps: float) -> None:
    """The render as a results case (docs/evaluation.md): the frames, the reference photo and
    the driving video's frames as the pipeline read them (resampled to the render's rate)."""
    import torch

    from factorportrait.evaluation.results import write_case
    from factorportrait.io.video import read_image
    from factorportrait.tracking.video import load_video

    driving = load_video(args.driving_video, len(frames)).frames
    count = min(len(frames), len(driving))
    write_case(folder.parent, folder.name, torch.as_tensor(frames)[:count], fps,
               reference=read_image(args.reference), driving=driving[:count])
    print(f"wrote the evaluation case {folder} (python tools/evaluate.py {folder})")


def _launched_ranks() -> int:
    """``WORLD_SIZE`` of a ``torchrun`` launch (1 otherwise)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable WORLD_SIZE={value!r} must be an integer") \
            from None


def _check_memory(request: Any, args: argparse.Namespace, device: str) -> None:
    """The render's memory estimate from the checkpoint's config files alone (the pipeline
    repeats it with the loaded components)."""
    import json

    from factorportrait.inference.memory import check_render_memory
    from factorportrait.models.weights import read_config

    vae_dim = 96  # the official Wan 2.1 VAE
    vae_config = Path(args.checkpoint) / "vae_config.json"
    if args.vae is None and vae_config.is_file():
        try:
            vae_dim = int(json.loads(vae_config.read_text())["config"]["dim"])
        except (ValueError, KeyError, TypeError):
            pass  # loading names a broken VAE config
    check_render_memory(request.height, request.width, request.num_frames, vae_dim,
                        read_config(args.checkpoint).dim, device, args.vae_tile)


def with_trained_defaults(inputs: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    """``inputs`` with the checkpoint's training size and length as defaults (read from its
    ``config.json`` alone), as the pipeline will apply them."""
    from factorportrait.models.weights import read_config, read_trained

    read_config(checkpoint)  # a missing or broken checkpoint is named here, before weights
    trained = read_trained(checkpoint)
    out = dict(inputs)
    if out.get("height") is None and out.get("width") is None and "height" in trained:
        out.update(height=trained["height"], width=trained["width"])
    if "frames" in trained:
        out["default_frames"] = trained["frames"]
    return out


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point; input errors exit with status 2 and a one-line message."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"factorportrait-render: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
