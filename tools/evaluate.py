"""Score a folder of results with the field's metrics (docs/evaluation.md).

    python tools/evaluate.py RESULTS                     every metric whose network is found
    python tools/evaluate.py RESULTS --metrics psnr,ssim,lpips --lpips-backbone alexnet.pth
    python tools/evaluate.py RESULTS --arcface w600k_r50.onnx --inception inception.pt \\
        --i3d i3d_torchscript.pt --out RESULTS/evaluation

RESULTS holds one folder per generated video (``<case>/generated.mp4`` beside
``reference.png`` and ``ground_truth.mp4`` / ``driving.mp4`` / ``driving_pose.mp4`` +
``driving_expression.mp4``; :mod:`factorportrait.evaluation.results`). Writes
``evaluation.json``, ``evaluation.md`` and ``evaluation.png`` to ``--out`` (default
RESULTS) and prints the Markdown. Metric networks are never downloaded: name their files (a
metric asked for by name whose file is missing is refused in one line; with the default
``--metrics all`` it is skipped and the reason listed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="the results folder (one sub-folder per video)")
    parser.add_argument("--metrics", help="comma-separated: psnr,ssim,lpips,csim,aed,apd,fid,"
                        "fvd (default: all whose networks are found)")
    parser.add_argument("--out", help="output folder (default: the results folder)")
    parser.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"))
    parser.add_argument("--lpips-backbone", help="torchvision alexnet/vgg16 weights (.pth)")
    parser.add_argument("--lpips-heads", help="LPIPS v0.1 linear heads (alex.pth / vgg.pth; "
                        "default: the lpips package's own)")
    parser.add_argument("--arcface", help="insightface ArcFace ONNX (w600k_r50.onnx), for CSIM")
    parser.add_argument("--inception", help="StyleGAN's Inception TorchScript, for FID")
    parser.add_argument("--i3d", help="StyleGAN-V's I3D TorchScript, for FVD")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from factorportrait.evaluation.networks import MissingWeightsError
    from factorportrait.evaluation.report import (
        WeightPaths,
        evaluate_results,
        format_markdown,
        load_networks,
        parse_metrics,
        plot_report,
    )
    from factorportrait.io.atomic import atomic_write_bytes

    paths = WeightPaths(args.lpips_backbone, args.lpips_heads, args.lpips_net, args.arcface,
                        args.inception, args.i3d)
    out = Path(args.out) if args.out else Path(args.results)
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; expected a folder")
        metrics, explicit = parse_metrics(args.metrics)
        networks = load_networks(metrics, paths, explicit)
        report = evaluate_results(args.results, metrics, networks,
                                  progress=not args.no_progress)
        out.mkdir(parents=True, exist_ok=True)
        markdown = format_markdown(report)
        atomic_write_bytes(out / "evaluation.json",
                           json.dumps(report, indent=1, allow_nan=False).encode())
        atomic_write_bytes(out / "evaluation.md", markdown.encode())
        plot_report(report, out / "evaluation.png")
    except (MissingWeightsError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"wrote evaluation.json, evaluation.md and evaluation.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
