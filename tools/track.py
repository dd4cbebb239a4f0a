"""Track the face in a video into a control track (docs/tracking.md).

    python tools/track.py VIDEO --out TRACK.safetensors [--preview PNG]
        [--encoder DIR] [--frames N] [--fov 40] [--min-cutoff 1.0 --beta 0.5] [--no-smoothing]

Writes a ControlTrack: head pose in the video camera's frame (world "camera"), the static
camera, fps, and expression codes when --encoder names a folder with an expression encoder
(e.g. checkpoints/demo). --preview draws landmarks, crop boxes and head axes on sampled frames
above a plot of the pose over time. A video without a face exits with status 2 and one line,
writing nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="track.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video")
    parser.add_argument("--out", required=True, help="control track (.safetensors)")
    parser.add_argument("--preview", help="PNG of the tracking")
    parser.add_argument("--encoder", help="folder with expression_encoder.json (codes)")
    parser.add_argument("--frames", type=int, help="track the first N frames only")
    parser.add_argument("--fov", type=float, default=None,
                        help="horizontal field of view of the video camera, degrees (40)")
    parser.add_argument("--min-cutoff", type=float, help="One-Euro cut-off at rest, Hz, for "
                        "landmarks, pose and boxes (defaults: docs/tracking.md)")
    parser.add_argument("--beta", type=float, help="One-Euro speed coefficient")
    parser.add_argument("--no-smoothing", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def tracker_config(args: argparse.Namespace):
    import dataclasses

    from factorportrait.tracking import Smoothing, TrackerConfig

    smoothing = Smoothing.off() if args.no_smoothing else Smoothing()
    changes = {key: value for key, value in (("min_cutoff", args.min_cutoff),
                                             ("beta", args.beta)) if value is not None}
    if changes and not args.no_smoothing:
        smoothing = Smoothing(*(dataclasses.replace(stage, **changes) for stage in (
            smoothing.landmarks, smoothing.pose, smoothing.boxes)))
    fields = {} if args.fov is None else {"fov_deg": args.fov}
    return TrackerConfig(smoothing=smoothing, **fields)


def run(args: argparse.Namespace) -> int:
    from factorportrait.tracking import FaceTracker, track_video

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out} must end in .safetensors")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: folder {out.parent} does not exist")
    if args.preview is not None and not Path(args.preview).parent.is_dir():
        raise ValueError(f"--preview {args.preview}: folder does not exist")
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    encoder = None
    if args.encoder is not None:
        from factorportrait.inference.loading import expression_encoder_dir, \
            load_expression_encoder
        folder = expression_encoder_dir(args.encoder)
        if folder is None:
            raise FileNotFoundError(f"--encoder {args.encoder} has no expression_encoder.json")
        encoder = load_expression_encoder(folder)
    with FaceTracker(tracker_config(args)) as tracker:
        track, face, frames = track_video(args.video, tracker, encoder=encoder,
                                          max_frames=args.frames, name="video",
                                          progress=not args.no_progress)
    track.save(out)
    print(face.report.summary())
    print(f"wrote {out}: {track.num_frames} frames at {track.fps:g} fps"
          + (", with expression codes" if track.expression_codes is not None else ""))
    if args.preview is not None:
        from factorportrait.tracking.preview import tracking_preview
        tracking_preview(frames, face, args.preview)
        print(f"wrote {args.preview}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"track.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
