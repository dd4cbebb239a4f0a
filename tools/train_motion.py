"""Train DeX-Portrait's motion trainer on synthetic avatars (factorportrait/motion/).

    python tools/train_motion.py                                        the recipe as is
    python tools/train_motion.py steps=300 time_limit_minutes=5 output_dir=outputs/motion_x
    python tools/train_motion.py --recipe my.yaml preset=base batch_size=16
    python tools/train_motion.py --print-config                         dry run
    torchrun --nproc_per_node 2 tools/train_motion.py batch_size=16     data parallel
    torchrun --nproc_per_node 8 tools/train_motion.py preset=base batch_size=64 device=cuda

Overrides are ``key=value`` (OmegaConf dotlist; nested: ``loss.adversarial=0.05``). Resumes
from ``<output_dir>/checkpoints``' latest checkpoint when there is one. Writes the generator
(``MotionTrainer.save_pretrained``) to ``weights_dir`` and ``training.json`` to ``output_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "motion.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    parser.add_argument("--recipe", default=str(RECIPE), help=f"YAML recipe (default {RECIPE})")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    args = parser.parse_args(argv)

    import torch

    from factorportrait.motion.train import config_from_recipe, train_motion

    try:
        config = config_from_recipe(args.recipe, args.overrides)
    except (ValueError, TypeError, OSError) as error:
        message = " ".join(str(error).split())
        print(f"error: {args.recipe}: {message}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: data parallel
            from factorportrait.training.distributed import init_process_group, training_device

            device = training_device(config.device, "motion training: device")
            if device.type == "cuda":
                torch.cuda.set_device(device)  # NCCL's own buffers on this process's GPU
            init_process_group(device)
        train_motion(config, log=lambda line: print(line, flush=True))
    except ValueError as error:  # e.g. a checkpoint trained with other settings
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
