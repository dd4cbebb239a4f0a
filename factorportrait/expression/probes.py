"""Linear probes and retrieval for evaluating expression codes (or raw pixels).

- :class:`RidgeProbe`: ridge regression on standardised features, the penalty chosen by k-fold
  cross-validation on the fitting set from ``ALPHAS`` × the mean eigenvalue of the (Gram or
  covariance) matrix — so codes of 128 dims and pixels of 12k dims get the same treatment.
  Solved by one eigendecomposition (primal for D <= N, dual for D > N), in float64.
- :func:`classification_accuracy`: a ridge classifier (one-hot targets, arg-max).
- :func:`r2_scores`, :func:`rmse`.
- :func:`retrieval_accuracy`: top-1 nearest neighbour (cosine) among samples of other
  identities and other views.
"""

from __future__ import annotations

import torch
from torch import Tensor

ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
FOLDS = 4


def _solve_all(x_fit: Tensor, y_fit: Tensor, x_eval: Tensor, alphas: tuple[float, ...]
               ) -> list[Tensor]:
    """Ridge predictions ``(M, K)`` at ``x_eval (M, D)`` for each alpha; ``x``/``y`` already
    centred (float64)."""
    n, d = x_fit.shape
    if d <= n:
        values, vectors = torch.linalg.eigh(x_fit.T @ x_fit)  # (D,), (D, D)
        projected = vectors.T @ (x_fit.T @ y_fit)  # (D, K)
        left = x_eval @ vectors  # (M, D)
    else:
        values, vectors = torch.linalg.eigh(x_fit @ x_fit.T)  # (N,), (N, N)
        projected = vectors.T @ y_fit  # (N, K)
        left = (x_eval @ x_fit.T) @ vectors  # (M, N)
    values = values.clamp_min(0)
    scale = values.mean().clamp_min(1e-12)
    return [left @ (projected / (values + alpha * scale)[:, None]) for alpha in alphas]


class RidgeProbe:
    """Ridge regression ``features (N, D) -> targets (N, K)`` with a cross-validated penalty."""

    def __init__(self, features: Tensor, targets: Tensor, alphas: tuple[float, ...] = ALPHAS,
                 folds: int = FOLDS, seed: int = 0) -> None:
        x = features.double().flatten(1)
        y = targets.double().reshape(len(x), -1)
        self.mean = x.mean(0)
        self.std = x.std(0).clamp_min(1e-6)
        x = (x - self.mean) / self.std
        self.alpha = self._select(x, y, alphas, folds, seed)
        self.target_mean = y.mean(0)
        self._x, self._y = x, y - self.target_mean

    @staticmethod
    def _select(x: Tensor, y: Tensor, alphas: tuple[float, ...], folds: int, seed: int
                ) -> float:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        errors = torch.zeros(len(alphas), dtype=torch.float64)
        for fold in range(folds):
            held = order[fold::folds]
            kept = order[torch.isin(order, held, invert=True)]
            mean = y[kept].mean(0)
            predictions = _solve_all(x[kept], y[kept] - mean, x[held], alphas)
            for index, prediction in enumerate(predictions):
                errors[index] += (prediction + mean - y[held]).pow(2).sum()
        return alphas[int(errors.argmin())]

    def predict(self, features: Tensor) -> Tensor:
        """``features (M, D)`` -> predictions ``(M, K)`` (float32)."""
        x = (features.double().flatten(1) - self.mean) / self.std
        prediction = _solve_all(self._x, self._y, x, (self.alpha,))[0] + self.target_mean
        return prediction.float()


def r2_scores(prediction: Tensor, target: Tensor) -> Tensor:
    """Coefficient of determination per column ``(K,)`` of ``(M, K)`` (1 perfect, 0 = the
    mean of the evaluated targets, negative = worse)."""
    target = target.double().reshape(len(target), -1)
    prediction = prediction.double().reshape(target.shape)
    residual = (prediction - target).pow(2).sum(0)
    total = (target - target.mean(0)).pow(2).sum(0).clamp_min(1e-12)
    return (1 - residual / total).float()


def rmse(prediction: Tensor, target: Tensor) -> float:
    """Root-mean-square error over all entries."""
    return float((prediction.double() - target.double()).pow(2).mean().sqrt())


def classification_accuracy(train_features: Tensor, train_labels: Tensor,
                            test_features: Tensor, test_labels: Tensor) -> float:
    """Accuracy of a ridge classifier (one-hot targets) fit on the train split."""
    classes = torch.unique(torch.cat([train_labels, test_labels]))
    onehot = (train_labels[:, None] == classes[None]).double()  # (N, C)
    scores = RidgeProbe(train_features, onehot).predict(test_features)  # (M, C)
    return float((classes[scores.argmax(1)] == test_labels).double().mean())


def retrieval_accuracy(features: Tensor, group: Tensor, identity: Tensor, view: Tensor,
                       across_identities: bool = True) -> tuple[float, float]:
    """Top-1 retrieval across identities and views.

    For each query its nearest neighbour by cosine similarity among the samples of a different
    view and (``across_identities``) a different identity; a hit when that neighbour has the same ``group`` (the same
    expression). Queries without any candidate of their group are skipped. Returns the
    accuracy and its chance level (mean fraction of same-group candidates).
    """
    x = features.double().flatten(1)
    x = x - x.mean(0)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similarity = x @ x.T  # (N, N)
    allowed = view[:, None] != view[None]
    if across_identities:
        allowed &= identity[:, None] != identity[None]
    same = group[:, None] == group[None]
    usable = (allowed & same).any(1)
    if not bool(usable.any()):
        return float("nan"), float("nan")
    similarity = similarity.masked_fill(~allowed, float("-inf"))
    nearest = similarity.argmax(1)
    hits = (group[nearest] == group)[usable].double().mean()
    chance = ((allowed & same).sum(1) / allowed.sum(1).clamp_min(1))[usable].double().mean()
    return float(hits), float(chance)
