"""The end-to-end demo (docs/demo.md; recipe recipes/demo.yaml).

    python tools/demo.py train                  train everything (make demo-train; resumable)
    python tools/demo.py train --until vae      stop after a step (data vae encoder codes
                                                latents dit ship)
    python tools/demo.py render                 renders, contact sheet, metric table (make demo)
    python tools/demo.py evaluate --clips 1 --frames 9 --steps 4     the table on a reduced set

``key=value`` arguments override the recipe (``dit.stages.stage1.steps=50``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("train", "render", "evaluate"))
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    parser.add_argument("--recipe", help="demo recipe (default recipes/demo.yaml)")
    parser.add_argument("--until", help="train: stop after this step")
    parser.add_argument("--force", nargs="*", default=[], help="train: re-run these steps")
    parser.add_argument("--checkpoints", help="render/evaluate: checkpoint folder "
                        "(default: the recipe's, checkpoints/demo)")
    parser.add_argument("--out", help="render/evaluate: output folder (default outputs/demo/"
                        "render)")
    parser.add_argument("--clips", type=int, help="evaluate: held-out clips (default: recipe)")
    parser.add_argument("--frames", type=int, help="evaluate: frames per clip (default: recipe)")
    parser.add_argument("--steps", type=int, help="render/evaluate: denoising steps")
    parser.add_argument("--json", help="evaluate/render: also write the table as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from factorportrait.demo.config import RECIPE, load_demo_config

    try:
        config = load_demo_config(args.recipe or RECIPE, args.overrides)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "train":
        from factorportrait.demo.train import train_demo

        command = shlex.join(["python", "tools/demo.py", *(argv if argv is not None
                                                             else sys.argv[1:])])
        timings = train_demo(config, command, args.until, args.force)
        print(json.dumps(timings, indent=1))
        return 0
    from factorportrait.demo.showcase import run_demo

    return run_demo(config, args)


if __name__ == "__main__":
    sys.exit(main())
