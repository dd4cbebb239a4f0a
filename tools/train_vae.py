"""Train a reduced-width Wan VAE on a dataset (recipes/vae.yaml; factorportrait.training.vae).

    python tools/train_vae.py root=data/synth output_dir=outputs/vae steps=2000
    python tools/train_vae.py --print-config root=data/synth        dry run
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "vae.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    parser.add_argument("--recipe", default=str(RECIPE), help=f"YAML recipe (default {RECIPE})")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    args = parser.parse_args(argv)

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from factorportrait.training.vae import VAETrainConfig, check_inputs, train_vae

    try:
        recipe = OmegaConf.merge(OmegaConf.load(args.recipe),
                                 OmegaConf.from_dotlist(args.overrides))
        config = VAETrainConfig(**OmegaConf.to_container(recipe, resolve=True,
                                                         throw_on_missing=True))
    except (ValueError, TypeError, OmegaConfBaseException) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(asdict(config), indent=2))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        check_inputs(config)  # no dataset, no CUDA, a bad init_from: one line
    except ValueError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    vae = train_vae(config)
    print(f"VAE (width {vae.config.dim}, hash {vae.weights_hash()}) -> {config.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
