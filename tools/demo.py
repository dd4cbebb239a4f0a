"""The end-to-end demo (docs/demo.md; recipe recipes/demo.yaml).

    python tools/demo.py train                  train everything (make demo-train; resumable)
    python tools/demo.py train --until vae      stop after a step (data vae encoder codes
                                                latents dit ship)
    python tools/demo.py render                 renders, contact sheet, metric table (make demo)
    python tools/demo.py evaluate --clips 1 --frames 9 --steps 4     the table on a reduced set
    python tools/demo.py ablate c2_no_normal_maps   train + score one ablation row (resumable)
    python tools/demo.py ablations              the ablation table of the rows run so far

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
    parser.add_argument("command", choices=("train", "render", "evaluate", "ablate",
                                            "ablations"))
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides (ablate: the "
                        "ablation's name first, from recipes/ablations/)")
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
    parser.add_argument("--cases", help="evaluate/render: also write every evaluated video as "
                        "a results case here, for tools/evaluate.py")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may follow options
    if args.clips is not None and args.clips < 1:
        parser.error(f"--clips must be >= 1, got {args.clips}")
    if args.frames is not None and (args.frames < 5 or (args.frames - 1) % 4):
        parser.error(f"--frames must be 4k + 1 >= 5, got {args.frames}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.command in ("ablate", "ablations"):
        return _ablation_command(args)
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
        try:
            timings = train_demo(config, command, args.until, args.force)
        except ValueError as error:  # --until / --force naming no step
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(json.dumps(timings, indent=1))
        return 0
    from factorportrait.demo.showcase import run_demo

    return run_demo(config, args)


def _ablation_command(args: argparse.Namespace) -> int:
    from factorportrait.demo.ablation import ablation_names, ablation_table, run_ablation
    from factorportrait.demo.config import RECIPE, load_demo_config
    from factorportrait.demo.evaluate import format_table

    if args.command == "ablations":
        try:
            print(ablation_table(load_demo_config(args.recipe or RECIPE, args.overrides)))
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    if not args.overrides or "=" in args.overrides[0]:
        print(f"error: ablate needs an ablation name first; ablations: "
              f"{', '.join(ablation_names())}", file=sys.stderr)
        return 2
    name, overrides = args.overrides[0], args.overrides[1:]
    try:
        table = run_ablation(name, overrides, args.clips, args.frames, args.steps, args.recipe)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
