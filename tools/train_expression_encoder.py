"""Train the expression encoder on synthetic expression sets (docs/expression.md).

    python tools/train_expression_encoder.py                                  the recipe as is
    python tools/train_expression_encoder.py steps=300 time_limit_minutes=3 output_dir=outputs/x
    python tools/train_expression_encoder.py --recipe my.yaml preset=resnet18 crop_size=224
    python tools/train_expression_encoder.py --print-config                   dry run

Overrides are ``key=value`` (OmegaConf dotlist; nested: ``loss.invariance=2``). Writes
``expression_encoder.{json,safetensors}`` and ``training.json`` to ``output_dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "expression_encoder.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    parser.add_argument("--recipe", default=str(RECIPE), help=f"YAML recipe (default {RECIPE})")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    args = parser.parse_args(argv)

    import torch

    from factorportrait.expression.train import config_from_recipe, train_expression_encoder

    try:
        config = config_from_recipe(args.recipe, args.overrides)
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    train_expression_encoder(config, log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
