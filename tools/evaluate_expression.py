"""Evaluate expression encoders on held-out synthetic identities (docs/expression.md).

    python tools/evaluate_expression.py --encoder outputs/expression_encoder_small
    python tools/evaluate_expression.py --encoder outputs/expression_encoder_small \
        --random-init small --sets 128 --views 6 --json outputs/expression_eval.json
    python tools/evaluate_expression.py --random-init tiny --crop-size 32 --sets 16 --views 4
    python tools/evaluate_expression.py --encoder DIR --dataset data/synthetic   # clips on disk

Prints, per feature source (each encoder, an untrained encoder of a preset, raw pixels): the
expression-parameter RMSE / R² of a ridge probe fit on training identities and scored on held-out
ones, identity-probe accuracy (vs chance), pose-probe R² (head yaw, head pitch, camera azimuth;
goal ≈ 0) and nearest-neighbour expression retrieval across identities and views (vs chance).
Evaluation sets are rendered on the fly, deterministic from --seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", action="append", default=[], metavar="[NAME=]DIR",
                        help="a save_pretrained folder (repeatable)")
    parser.add_argument("--random-init", action="append", default=[], metavar="PRESET",
                        help="also evaluate an untrained encoder of this preset (seed 0)")
    parser.add_argument("--no-pixels", action="store_true", help="skip the raw-pixel baseline")
    parser.add_argument("--crop-size", type=int, default=None,
                        help="crop size (default: the encoders'; required with --random-init "
                             "alone if not the preset's)")
    parser.add_argument("--sets", type=int, default=96, help="expressions per set (default 96)")
    parser.add_argument("--views", type=int, default=6, help="views per expression (default 6)")
    parser.add_argument("--train-identities", type=int, default=64,
                        help="training avatars the probes are fit on (default 64)")
    parser.add_argument("--heldout-identities", type=int, default=8,
                        help="held-out avatars the metrics are measured on (default 8)")
    parser.add_argument("--crop-scale", type=float, default=1.0,
                        help="crop side over the tight face box (default 1; 1.3 frames the face "
                        "like the motion trainer's expression crop)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (default 0)")
    parser.add_argument("--identity-seed", type=int, default=0,
                        help="avatar seed of the training recipe (default 0)")
    parser.add_argument("--dataset", default=None,
                        help="evaluate on a dataset folder's train / heldout clips instead")
    parser.add_argument("--frames-per-clip", type=int, default=8, help="with --dataset")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", default=None, help="also write the metrics to this file")
    args = parser.parse_args(argv)
    if not args.crop_scale >= 1:
        parser.error(f"--crop-scale must be >= 1 (the tight face box or more), got "
                     f"{args.crop_scale}")
    if args.dataset and args.crop_scale != 1:
        parser.error("--crop-scale applies to the synthetic sets; a --dataset's crops come "
                     "from its annotated face boxes")
    return args


def load_sources(args: argparse.Namespace) -> dict:
    import torch

    from factorportrait.models.expression_encoder import ExpressionEncoder, ExpressionEncoderConfig

    sources = {}
    for item in args.encoder:
        name, _, path = item.rpartition("=")
        sources[name or Path(path).name] = ExpressionEncoder.from_pretrained(path)
    sizes = {encoder.config.crop_size for encoder in sources.values()}
    size = args.crop_size or (sizes.pop() if len(sizes) == 1 else None)
    for preset in args.random_init:
        torch.manual_seed(0)
        config = ExpressionEncoderConfig.preset(preset, **({"crop_size": size} if size else {}))
        sources[f"untrained {preset}"] = ExpressionEncoder(config).eval()
    return sources


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from factorportrait.expression import evaluate as ev

    torch.set_num_threads(args.threads)
    sources = load_sources(args)
    sizes = {encoder.config.crop_size for encoder in sources.values()} | (
        {args.crop_size} if args.crop_size else set())
    if len(sizes) != 1:
        print(f"error: need one crop size for all encoders, got {sorted(sizes) or 'none'} "
              "(pass --encoder, --random-init or --crop-size)", file=sys.stderr)
        return 2
    size = sizes.pop()
    if args.dataset:
        from factorportrait.expression.dataset_eval import dataset_set

        probe = dataset_set(args.dataset, "train", size, args.frames_per_clip)
        test = dataset_set(args.dataset, "heldout", size, args.frames_per_clip)
    else:
        probe, test = ev.synthetic_evaluation(
            size, args.sets, args.views, args.train_identities, args.heldout_identities,
            args.seed, args.identity_seed, crop_scale=args.crop_scale)
    print(f"{len(probe)} probe crops (training identities), {len(test)} test crops "
          f"(held-out identities), {size} px")
    results = ev.evaluate_sources(sources, probe, test, pixels=not args.no_pixels)
    print(ev.format_report(results, ev.expression_baseline_rmse(probe, test)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
