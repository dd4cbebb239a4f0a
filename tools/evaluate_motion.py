"""Score a trained motion trainer on held-out synthetic avatars (docs/motion.md).

    python tools/evaluate_motion.py --model outputs/motion/model
    python tools/evaluate_motion.py --model outputs/motion/model --batches 8 \
        --json benchmarks/cpu-motion.json

Prints two tables: the reconstruction of driving frames (L1, PSNR, SSIM) by the trainer and
by warping the source by the ground-truth pose alone (through the trainer's volume and
decoder with the source's expression, and as a plain image warp) and by copying the source;
and the head-rotation error of the pose encoder beside MediaPipe's landmark fit (the
library's FaceTracker) on the same samples, rendered at --tracker-size pixels for MediaPipe.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROWS = (("model", "motion trainer (pose + expression encoders)"),
        ("gt_pose", "source volume warped by the ground-truth pose, source expression"),
        ("image_warp", "source image warped by the ground-truth pose"),
        ("source", "source copied"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a MotionTrainer.save_pretrained folder")
    parser.add_argument("--identities", type=int, default=16, help="held-out avatars (16)")
    parser.add_argument("--batches", type=int, default=8, help="batches of 8 samples (8)")
    parser.add_argument("--tracker-size", type=int, default=256,
                        help="render size of the frames MediaPipe reads (256); 0 = skip it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args(argv)


def report(results: dict) -> str:
    model, tracker = results["model"], results.get("tracker")
    lines = ["| reconstruction of the driving frame | L1 | PSNR (dB) | SSIM |",
             "|---|---:|---:|---:|"]
    for key, label in ROWS:
        lines.append(f"| {label} | {model[f'{key}_l1']:.3f} | {model[f'{key}_psnr']:.2f} | "
                     f"{model[f'{key}_ssim']:.3f} |")
    lines += ["", "| head rotation error (°) | absolute | source to driving | frames read |",
              "|---|---:|---:|---:|",
              f"| pose encoder ({results['image_size']} px) | {model['rotation_deg']:.1f} | "
              f"{model['relative_rotation_deg']:.1f} | 100 % |"]
    if tracker is not None:
        lines.append(f"| MediaPipe tracker ({results['tracker_size']} px) | "
                     f"{tracker['rotation_deg']:.1f} | {tracker['relative_rotation_deg']:.1f} | "
                     f"{100 * tracker['detected']:.0f} % |")
    lines += ["", f"pose encoder: relative scale error {model['scale_rel']:.3f}, translation "
              f"error {model['translation']:.3f} (normalised image units)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from factorportrait.io.atomic import atomic_write_bytes
    from factorportrait.motion.evaluate import evaluate_motion, tracker_pose_errors
    from factorportrait.motion.model import MotionTrainer

    torch.set_num_threads(args.threads)
    try:
        model = MotionTrainer.from_pretrained(args.model)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.monotonic()
    results = {"model_dir": args.model, "image_size": model.config.image_size,
               "samples": 8 * args.batches, "identities": args.identities,
               "model": evaluate_motion(model, args.identities, args.batches, 8,
                                        seed=args.seed)}
    if args.tracker_size:
        results["tracker_size"] = args.tracker_size
        results["tracker"] = tracker_pose_errors(args.tracker_size, args.identities,
                                                 args.batches, 8, seed=args.seed)
    results["seconds"] = round(time.monotonic() - started, 1)
    print(report(results))
    if args.json:
        atomic_write_bytes(Path(args.json), (json.dumps(results, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
