"""Evaluation of expression codes on held-out synthetic identities (issue 8; command:
``tools/evaluate_expression.py``).

Two evaluation sets, rendered on the fly and deterministic from a seed: a *probe-fitting* set
on training identities and a *test* set on held-out identities (:func:`synthetic_evaluation`;
or clips of a dataset folder, :mod:`factorportrait.expression.dataset_eval`). For any feature
extractor (an encoder's codes, raw pixels) :func:`evaluate_features` measures:

- ``expression_rmse`` / ``expression_r2``: a ridge probe fit on the probe set predicts the 8
  expression parameters of the test set (RMSE in parameter units, mean R²);
- ``identity_accuracy`` (vs ``identity_chance``): a linear classifier of the held-out identity,
  fit on the test sets of the first half of the expressions, scored on the other half;
- ``pose_r2``: mean R² of a ridge probe (fit on the probe set) predicting head yaw, head pitch
  and camera azimuth on the test set — goal ≈ 0; ``pose_r2_<factor>`` per factor, including
  the face's apparent yaw / pitch seen by the camera (``view_yaw``, ``view_pitch``);
- ``retrieval`` (vs ``retrieval_chance``): the fraction of test queries whose nearest code
  among other identities and other views shows the same sampled expression vector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from factorportrait.data.synthetic.config import derive_seed
from factorportrait.expression.crop import FaceBoxes, crop_faces
from factorportrait.expression.probes import (
    RidgeProbe,
    classification_accuracy,
    r2_scores,
    retrieval_accuracy,
    rmse,
)
from factorportrait.expression.sets import AvatarPool, SetSampling, identity_seeds, render_sets

POSE_FACTORS = ("head_yaw", "head_pitch", "camera_azimuth")
APPARENT_FACTORS = ("view_yaw", "view_pitch")
METRICS = ("expression_rmse", "expression_r2", "identity_accuracy", "identity_chance",
           "pose_r2", "retrieval", "retrieval_chance")

FeatureFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True, eq=False)
class EvaluationSet:
    """``N`` face crops with ground truth.

    Attributes:
        crops: ``(N, 3, S, S)`` in [-1, 1].
        expression: ``(N, E)`` parameters.
        group: ``(N,)`` long — equal for samples of the same sampled expression vector.
        identity, view: ``(N,)`` long — the avatar, and the camera (a clip for datasets).
        factors: name -> ``(N,)`` degrees (:data:`POSE_FACTORS` + :data:`APPARENT_FACTORS`).
        across_identities: retrieval candidates must show another identity (False where no
            expression is shared across identities, e.g. a dataset's clips).
    """

    crops: Tensor
    expression: Tensor
    group: Tensor
    identity: Tensor
    view: Tensor
    factors: dict[str, Tensor]
    across_identities: bool = True

    def __len__(self) -> int:
        return self.crops.shape[0]


def synthetic_set(split: str, num_sets: int, views: int, identities: int, crop_size: int,
                  seed: int = 0, identity_seed: int = 0, sampling: SetSampling | None = None,
                  roll_normalise: bool = False, crop_scale: float = 1.0) -> EvaluationSet:
    """Render ``num_sets`` expressions × ``views`` views on ``identities`` avatars of ``split``
    (deterministic from ``seed``; avatars from ``identity_seeds(identities, split,
    identity_seed)``) and crop the face boxes at ``crop_size`` pixels. ``crop_scale``: the
    crop's side over the face box's (``FACE_BOX_M``, brows to chin); e.g. 1.3 frames the
    face like the motion trainer's expression crop (the landmark box × 1.2)."""
    if not crop_scale >= 1:
        raise ValueError(f"crop_scale must be >= 1 (the face box or more), got {crop_scale}")
    sampling = sampling if sampling is not None else SetSampling()
    if crop_scale > 1:  # render the room the larger crop needs: a rotated crop's corners, and
        # a pixel each side against render_size's rounding
        needed = crop_scale * (2 ** 0.5 if roll_normalise else 1.0) + 2 / crop_size
        sampling = replace(sampling, context=max(sampling.context, needed))
    generator = torch.Generator().manual_seed(derive_seed(seed, "expression-eval", split))
    avatars = AvatarPool(identity_seeds(identities, split, identity_seed))
    sets = render_sets(avatars, num_sets, views, crop_size, sampling, generator)
    set_index = torch.arange(num_sets).repeat_interleave(views)
    view_index = torch.arange(views).repeat(num_sets)
    frames = sets.images[set_index, view_index]
    boxes = sets.face_boxes(set_index, view_index)
    boxes = FaceBoxes(boxes.center, boxes.side * crop_scale, boxes.roll)
    crops = crop_faces(frames, boxes, crop_size, roll_normalise=roll_normalise)
    return EvaluationSet(crops, sets.expression[set_index], set_index, sets.identity.flatten(),
                         torch.arange(num_sets * views),
                         {name: value.flatten() for name, value in sets.factors.items()})


def synthetic_evaluation(crop_size: int, num_sets: int = 96, views: int = 6,
                         train_identities: int = 64, heldout_identities: int = 8,
                         seed: int = 0, identity_seed: int = 0,
                         sampling: SetSampling | None = None,
                         roll_normalise: bool = False, crop_scale: float = 1.0
                         ) -> tuple[EvaluationSet, EvaluationSet]:
    """The probe-fitting set (training identities) and the test set (held-out identities),
    ``num_sets × views`` crops each (``crop_scale``: :func:`synthetic_set`)."""
    probe = synthetic_set("train", num_sets, views, train_identities, crop_size, seed,
                          identity_seed, sampling, roll_normalise, crop_scale)
    test = synthetic_set("heldout", num_sets, views, heldout_identities, crop_size, seed,
                         identity_seed, sampling, roll_normalise, crop_scale)
    return probe, test


@torch.no_grad()
def extract(features: FeatureFn, crops: Tensor, batch: int = 128) -> Tensor:
    """``features`` applied to ``crops (N, 3, S, S)`` in batches -> ``(N, D)`` float32."""
    return torch.cat([features(crops[i:i + batch]).flatten(1).float()
                      for i in range(0, len(crops), batch)])


def _pose_targets(data: EvaluationSet, names: tuple[str, ...]) -> Tensor:
    return torch.stack([data.factors[name] for name in names], 1)  # (N, len(names))


def _identity_split(data: EvaluationSet) -> tuple[Tensor, Tensor]:
    """Fit / score masks: the first half of the expression groups vs the rest."""
    groups = torch.unique(data.group)
    first = torch.isin(data.group, groups[: max(1, len(groups) // 2)])
    return first, ~first


def evaluate_features(probe_features: Tensor, probe: EvaluationSet, test_features: Tensor,
                      test: EvaluationSet) -> dict[str, float]:
    """All metrics (module docstring) of features ``(N, D)`` of the probe and test sets."""
    expression = RidgeProbe(probe_features, probe.expression).predict(test_features)
    names = POSE_FACTORS + APPARENT_FACTORS
    pose = RidgeProbe(probe_features, _pose_targets(probe, names)).predict(test_features)
    pose_r2 = r2_scores(pose, _pose_targets(test, names))
    fit, score = _identity_split(test)
    identity = classification_accuracy(test_features[fit], test.identity[fit],
                                       test_features[score], test.identity[score])
    counts = torch.bincount(test.identity[score])
    retrieval, chance = retrieval_accuracy(test_features, test.group, test.identity, test.view,
                                           test.across_identities)
    metrics = {
        "expression_rmse": rmse(expression, test.expression),
        "expression_r2": float(r2_scores(expression, test.expression).mean()),
        "identity_accuracy": identity,
        "identity_chance": float(counts.max() / counts.sum()),
        "pose_r2": float(pose_r2[:len(POSE_FACTORS)].mean()),
        "retrieval": retrieval,
        "retrieval_chance": chance,
    }
    metrics.update({f"pose_r2_{name}": float(value) for name, value in zip(names, pose_r2)})
    return metrics


def evaluate(features: FeatureFn, probe: EvaluationSet, test: EvaluationSet
             ) -> dict[str, float]:
    """:func:`evaluate_features` of a feature extractor (e.g. an encoder in eval mode)."""
    return evaluate_features(extract(features, probe.crops), probe,
                             extract(features, test.crops), test)


def pixel_features(crops: Tensor) -> Tensor:
    """The raw-pixel baseline: crops ``(N, 3, S, S)`` flattened to ``(N, 3·S·S)``."""
    return crops.flatten(1)


def expression_baseline_rmse(probe: EvaluationSet, test: EvaluationSet) -> float:
    """RMSE of predicting every test expression as the probe set's mean (a scale for
    ``expression_rmse``)."""
    return rmse(probe.expression.mean(0).expand_as(test.expression), test.expression)


def format_report(results: dict[str, dict[str, float]], mean_rmse: float | None = None) -> str:
    """A plain-text table: one column per feature source, one row per metric."""
    names = list(results)
    rows = [f"{'metric':<26}" + "".join(f"{name:>16}" for name in names)]
    keys = list(METRICS) + sorted(k for k in results[names[0]] if k.startswith("pose_r2_"))
    for key in keys:
        rows.append(f"{key:<26}" + "".join(f"{results[n][key]:>16.3f}" for n in names))
    if mean_rmse is not None:
        rows.append(f"(expression_rmse of predicting the mean: {mean_rmse:.3f}; identity and "
                    f"retrieval chance levels listed)")
    return "\n".join(rows)


def evaluate_sources(sources: dict[str, FeatureFn], probe: EvaluationSet, test: EvaluationSet,
                     pixels: bool = True) -> dict[str, dict[str, float]]:
    """Metrics per named feature source (encoders in eval mode, any ``crops -> (N, D)``
    callable), plus the raw-pixel baseline when ``pixels``."""
    results = {name: evaluate(features, probe, test) for name, features in sources.items()}
    if pixels:
        results["raw pixels"] = evaluate(pixel_features, probe, test)
    return results
