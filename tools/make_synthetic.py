"""Write a synthetic dataset of procedural head avatars (phone, studio, ViewSweep, DynamicSweep).

    python tools/make_synthetic.py data/synthetic
    python tools/make_synthetic.py OUT --identities 6 --heldout 2 --frames 25 --size 128
    python tools/make_synthetic.py OUT --kinds viewsweep,dynamicsweep --size 256 --workers 8

Deterministic from --seed; re-running the same command on a folder resumes an interrupted run
(clips already in the manifest are kept, the rest are rendered). The last --heldout identities
get split "heldout". Layout and per-kind content: docs/dataset.md "Synthetic data".
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from factorportrait.data.format import KINDS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="output folder (created; an interrupted run resumes)")
    parser.add_argument("--identities", type=int, default=8, help="avatars (default 8)")
    parser.add_argument("--heldout", type=int, default=2,
                        help="last identities written with split 'heldout' (default 2)")
    parser.add_argument("--clips-per-kind", type=int, default=1,
                        help="clips per kind and identity (studio: takes) (default 1)")
    parser.add_argument("--frames", type=int, default=49,
                        help="frames per clip, >= 2 and >= the training window (default 49)")
    parser.add_argument("--size", default="128",
                        help="N or WxH pixels, multiples of 16 (default 128)")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate (default 25)")
    parser.add_argument("--seed", type=int, default=0, help="global seed (default 0)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS)} (default: all)")
    parser.add_argument("--studio-views", type=int, default=4,
                        help="cameras per studio take (default 4)")
    parser.add_argument("--supersample", type=int, default=2,
                        help="anti-aliasing factor of the renderer (default 2)")
    parser.add_argument("--lossy-rgb", action="store_true",
                        help="H.264 CRF 15 RGB videos (smaller, plays in browsers) instead of "
                             "exact lossless RGB; normal maps stay lossless")
    parser.add_argument("--capture-seconds", type=float, default=20.0,
                        help="length of the performance DynamicSweep segments come from")
    parser.add_argument("--workers", type=int, default=1,
                        help="render in N processes of one thread each (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of a single process (default 1: small images "
                             "gain little from more; use --workers for more cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--validate", action="store_true",
                        help="run the dataset validator afterwards (exit 1 on problems)")
    return parser.parse_args(argv)


def parse_size(text: str) -> tuple[int, int]:
    """``"128"`` → (128, 128); ``"192x128"`` → (width 192, height 128)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--size: expected N or WxH (e.g. 128 or 192x128), got {text!r}")
    width, height = int(parts[0]), int(parts[-1])
    return width, height


def build_config(args: argparse.Namespace):
    """``SyntheticConfig`` from the arguments (its ``ValueError`` names the bad setting)."""
    from factorportrait.data.synthetic import SyntheticConfig

    width, height = parse_size(args.size)
    kinds = tuple(kind.strip() for kind in args.kinds.split(",") if kind.strip())
    return SyntheticConfig(
        identities=args.identities, heldout=args.heldout, clips_per_kind=args.clips_per_kind,
        frames=args.frames, width=width, height=height, fps=args.fps, seed=args.seed,
        kinds=kinds, studio_views=args.studio_views, supersample=args.supersample,
        lossless_rgb=not args.lossy_rgb, capture_seconds=args.capture_seconds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ValueError as err:
        print(f"make_synthetic: error: {err}", file=sys.stderr)
        return 2
    import torch

    from factorportrait.data import read_manifest
    from factorportrait.data.synthetic import generate_dataset

    if args.threads < 1 or args.workers < 1:
        print("make_synthetic: error: --threads and --workers must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        report = generate_dataset(args.root, config, progress=not args.no_progress,
                                  workers=args.workers)
    except (ValueError, RuntimeError) as err:
        print(f"make_synthetic: error: {err}", file=sys.stderr)
        return 2
    records = read_manifest(args.root)
    kinds = Counter(record.kind for record in records)
    splits = {split: len({r.identity for r in records if r.split == split})
              for split in ("train", "heldout")}
    print(report.summary())
    print("  clips: " + ", ".join(f"{kind} {kinds[kind]}" for kind in config.kinds)
          + f"; identities: {splits['train']} train, {splits['heldout']} heldout; "
          f"{config.frames} frames at {config.width}x{config.height}, {config.fps:g} fps")
    if args.validate:
        from factorportrait.data import validate_dataset

        return validate_dataset(args.root).print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
