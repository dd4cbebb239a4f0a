"""Training: the loop, checkpoints, the curriculum (DESIGN "Curriculum"; docs/training.md).

- :mod:`~factorportrait.training.config`: ``TrainConfig``, the validated form of a recipe.
- :mod:`~factorportrait.training.loop`: ``train(config)``, the visible training loop.
- :mod:`~factorportrait.training.engines` / :mod:`~factorportrait.training.distributed`:
  one-process execution, and DeepSpeed ZeRO (the only deepspeed import site).
- :mod:`~factorportrait.training.checkpoint`: atomic safetensors + JSON checkpoints.
- :mod:`~factorportrait.training.curriculum`: stage outputs, ``init_from``, running stages.
- :mod:`~factorportrait.training.batches`: the data contract, datasets, resumable loader.
- :mod:`~factorportrait.training.toy_data`: ``SyntheticLatentDataset``, a random-latent
  stand-in for tests and benchmarks.
- :mod:`~factorportrait.training.renders`: validation videos through the pipeline.
"""

from factorportrait.training.batches import batch_to_conditions, build_dataset
from factorportrait.training.config import TrainConfig
from factorportrait.training.curriculum import resolve_init_from, run_curriculum
from factorportrait.training.loop import NonFiniteLossError, TrainResult, Trainer, train
from factorportrait.training.metrics import loss_curve
from factorportrait.training.toy_data import SyntheticLatentDataset

__all__ = ["NonFiniteLossError", "SyntheticLatentDataset", "TrainConfig", "TrainResult",
           "Trainer", "batch_to_conditions", "build_dataset", "loss_curve", "resolve_init_from",
           "run_curriculum", "train"]
