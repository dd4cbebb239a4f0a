"""``factorportrait-app`` (``make app``): the web app over the pipeline (docs/app.md).

Examples::

    factorportrait-app                                   # checkpoints/demo on 127.0.0.1:7860
    factorportrait-app --checkpoint ckpt/ --vae Wan2.1_VAE.pth --device cuda --dtype bfloat16
    factorportrait-app --host 0.0.0.0 --port 8080        # reachable from other machines

It listens on 127.0.0.1 (this machine only) unless ``--host`` says otherwise: ``--host
0.0.0.0`` exposes it to the network, with no authentication, so only on a network you trust.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factorportrait-app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/demo",
                        help="FactorPortrait checkpoint directory (default: checkpoints/demo)")
    parser.add_argument("--vae", help="Wan2.1_VAE.pth (when the checkpoint has no VAE)")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH",
                        help="LoRA adapter merged into the DiT (repeatable)")
    parser.add_argument("--lora-scale", action="append", type=float, metavar="S")
    parser.add_argument("--expression-encoder", metavar="DIR",
                        help="driving-video codes from this expression-encoder or "
                        "motion-trainer folder (as factorportrait-render's)")
    parser.add_argument("--pose-encoder", metavar="DIR",
                        help="driving-video head pose from this motion trainer's pose encoder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--output-dir", default="outputs/app",
                        help="each render's folder goes here (default: outputs/app)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0: every "
                             "interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--preload", action="store_true",
                        help="read the weights at start-up instead of at the first render")
    return parser


def make_renderer(args: argparse.Namespace):
    import torch

    from factorportrait.app.session import Renderer
    from factorportrait.cli.render import UsageError, encoder_components, resolve_device

    if args.lora_scale is not None and len(args.lora_scale) != len(args.lora):
        raise UsageError(f"--lora-scale: give one per --lora ({len(args.lora)}), got "
                         f"{len(args.lora_scale)}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    device = resolve_device(args.device)
    return Renderer(args.checkpoint, args.output_dir, device=device,
                    dtype=getattr(torch, args.dtype), vae_path=args.vae, lora=args.lora,
                    lora_scale=args.lora_scale, **encoder_components(args, device))


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: serves until interrupted; bad arguments exit 2 with one line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        print(f"factorportrait-app: error: the app needs gradio ({err}): pip install "
              "'gradio>=6,<7'", file=sys.stderr)
        return 2
    try:
        renderer = make_renderer(args)
        if args.preload:
            renderer.pipeline()
    except (FileNotFoundError, ValueError) as err:
        print(f"factorportrait-app: error: {err}", file=sys.stderr)
        return 2
    from factorportrait.app import launch
    launch(renderer, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
