"""Encode a dataset's training windows with the Wan VAE once, into its latent cache.

    python tools/precompute.py DATASET_DIR --vae Wan2.1_VAE.pth --frames 13 --size 480 480
    python tools/precompute.py DATASET_DIR --vae checkpoints/vae --frames 25 --tile 256

``--vae``: a folder written by ``WanVAE.save_pretrained`` or an official Wan 2.1 VAE file
(``.pth`` / ``.safetensors``; ``--vae-config small --vae-dim N`` for a reduced width). The
windows (``--frames``, ``--stride``, ``--size``, ``--window-step``, ``--references``) must be
the ones the training dataset is built with. Up-to-date entries are skipped; unreadable clips
are listed and the exit status is 1. Layout and invalidation: factorportrait/data/latent_cache.py
and docs/dataset.md.
"""

from __future__ import annotations

import argparse
import logging
import sys

DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="dataset folder (with manifest.jsonl)")
    parser.add_argument("--vae", required=True, help="VAE folder or Wan 2.1 VAE weights file")
    parser.add_argument("--vae-config", choices=("wan_2_1", "small"), default="wan_2_1",
                        help="architecture of a weights file (default: the official VAE)")
    parser.add_argument("--vae-dim", type=int, default=32, help="width of --vae-config small")
    parser.add_argument("--frames", type=int, required=True, help="frames per window, 4k + 1")
    parser.add_argument("--stride", type=int, default=1, help="source frames between frames")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="crop + resize to H x W (multiples of 16); default: native size")
    parser.add_argument("--window-step", type=int,
                        help="source frames between window starts (default: half a window)")
    parser.add_argument("--references", type=int, default=8,
                        help="reference candidate frames per clip (default 8)")
    parser.add_argument("--split", choices=("train", "heldout", "all"), default="all")
    parser.add_argument("--kinds", nargs="+", help="only these kinds (default: all)")
    parser.add_argument("--tile", type=int, help="spatial tile size in pixels (bounds memory)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="stored latent dtype (bfloat16 halves the size, not exact)")
    parser.add_argument("--force", action="store_true", help="recompute up-to-date entries")
    return parser.parse_args(argv)


def load_vae(path: str, config: str, dim: int):
    """A frozen ``WanVAE`` from a ``save_pretrained`` folder or an official weights file."""
    from factorportrait.models.vae import VAEConfig, WanVAE

    return WanVAE.load(path, VAEConfig.small(dim) if config == "small" else VAEConfig.wan_2_1())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    import torch

    from factorportrait.data import PortraitClipDataset, precompute_latents

    step = args.window_step or max(1, (args.frames - 1) * args.stride // 2)
    dataset = PortraitClipDataset(args.root, args.frames, args.stride, args.size,
                                  split=None if args.split == "all" else args.split,
                                  kinds=args.kinds,
                                  window_step=step, reference_count=args.references)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = load_vae(args.vae, args.vae_config, args.vae_dim).to(device)
    report = precompute_latents(dataset, vae, tile=args.tile, dtype=getattr(torch, args.dtype),
                                force=args.force, progress=True)
    for clip_id, reason in report.failed.items():
        print(f"{clip_id}: {reason}")
    print(report.summary())
    others = sorted(p.name for p in (dataset.root / "latents").glob("*")
                    if p.is_dir() and p.name != vae.weights_hash())
    if others:
        print(f"note: latents/{{{','.join(others)}}} belong to other VAEs (stale; delete them "
              "to free space)")
    print(f"train with: PortraitClipDataset(root, {args.frames}, stride={args.stride}, "
          f"size={tuple(args.size) if args.size else None}, window_step={step}, "
          f"reference_count={args.references}, latents=True, vae_hash={vae.weights_hash()!r})")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
