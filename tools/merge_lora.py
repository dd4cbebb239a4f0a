"""Merge LoRA adapters into a plain checkpoint: python tools/merge_lora.py BASE ADAPTER OUT.

BASE: a checkpoint directory (config.json + model.safetensors) — the one the adapter was
trained from (its identity is checked). ADAPTER: an adapter.safetensors (a LoRA stage's
final/ holds one) or several, with ``--scale`` once per adapter. OUT: a directory written
atomically in FactorPortraitDiT.save_pretrained format, which the pipeline and
``FactorPortraitDiT.from_pretrained`` load without peft; BASE's training size is kept.
Input errors exit with status 2 and one line.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="checkpoint directory the adapter was trained from")
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER", help="adapter.safetensors")
    parser.add_argument("out", help="output checkpoint directory")
    parser.add_argument("--scale", type=float, action="append",
                        help="scale of each adapter (repeat once per adapter; default 1)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from factorportrait.models.dit import FactorPortraitDiT
    from factorportrait.models.weights import read_trained
    from factorportrait.training.lora import merge_adapters, read_adapter_header

    try:
        for path in args.adapters:  # headers first: nothing is loaded for a bad file
            read_adapter_header(path)
        model = FactorPortraitDiT.from_pretrained(args.base)
        merged = merge_adapters(model, args.adapters, args.scale)
        merged.save_pretrained(args.out, read_trained(args.base) or None)
    except (FileNotFoundError, ValueError) as err:
        print(f"merge_lora: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {args.base} + {len(args.adapters)} adapter(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
