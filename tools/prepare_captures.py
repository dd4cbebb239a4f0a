"""Turn real captures into dataset clips with every annotation the loader needs.

    python tools/prepare_captures.py CAPTURES OUT [--encoder checkpoints/demo] [--fov 40]
        [--heldout ID,ID] [--frames N] [--validate]

CAPTURES holds phone/<identity>/<clip>.mp4 (monocular) and studio/<identity>/<take>/ with
<view>.mp4 files and cameras.json (our camera JSON, one camera per view in sorted view-name
order) or transforms.json (NeRF, file_path stems = view names). OUT becomes a dataset folder
(docs/dataset.md): videos, normal maps of the fitted avatar, annotations (cameras, head pose,
expression codes with --encoder). Resumable and atomic like make_synthetic.py: run the same
command again after an interruption. Layout and conventions: docs/tracking.md.
"""

from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="prepare_captures.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("captures", help="folder with phone/ and/or studio/")
    parser.add_argument("out", help="dataset folder (created; an interrupted run resumes)")
    parser.add_argument("--encoder", help="folder with expression_encoder.json (codes)")
    parser.add_argument("--fov", type=float, default=40.0,
                        help="horizontal field of view of phone videos, degrees (default 40)")
    parser.add_argument("--heldout", default="", help="comma-separated identities for split "
                        "'heldout'")
    parser.add_argument("--frames", type=int, help="keep the first N frames of each video")
    parser.add_argument("--validate", action="store_true",
                        help="run the dataset validator afterwards (exit 1 on problems)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from factorportrait.data.captures import CaptureSettings, prepare_captures

    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    heldout = tuple(sorted(name for name in args.heldout.split(",") if name))
    settings = CaptureSettings(fov_deg=args.fov, encoder=args.encoder, heldout=heldout,
                               max_frames=args.frames)
    report = prepare_captures(args.captures, args.out, settings,
                              progress=not args.no_progress)
    print(report.summary())
    if args.validate:
        from factorportrait.data.validate import validate_dataset
        return validate_dataset(args.out).print()
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"prepare_captures.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
