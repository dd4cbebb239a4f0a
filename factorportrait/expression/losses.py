"""Training loss of the expression encoder.

For a batch of pairs — codes ``a, b (B, D)`` of two renders of the same expression on different
identities, head poses and cameras — and the shared parameters ``y (B, 8)``:

    L = w_reg · (MSE(head(a), y) + MSE(head(b), y)) / 2        the codes carry the expression
      + w_inv · MSE(a, b)                                       ... and nothing else (VICReg s)
      + w_var · (v(a) + v(b)) / 2,  v(z) = mean_d relu(1 − std_d(z))    no collapse (VICReg v)
      + w_cov · (c(a) + c(b)),      c(z) = Σ_{i≠j} Cov(z)_ij² / D       decorrelated (VICReg c)

(Bardes et al., VICReg, ICLR 2022, Eq. 1-4). The regression term alone already prevents a
collapse; the variance term keeps the invariance term from being met by shrinking the codes.

With ``per_dimension_invariance`` the invariance term is instead scale-free, per dimension:

    w_inv · mean_d  mean_B (a_d − b_d)² / 2  /  (Var_d([a; b]) + ε)

the share of each dimension's variance that differs between two views of one expression. A
dimension then either follows the expression or goes constant, so it cannot be met by shrinking
and needs no variance hinge; the hinge, in turn, asks every one of the D dimensions for unit
variance, which 8 expression parameters cannot supply without identity, pose or camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from factorportrait.models.expression_encoder import ExpressionEncoder

VARIANCE_EPS = 1e-4


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (module docstring); ``variance_target`` is VICReg's γ."""

    regression: float = 10.0
    invariance: float = 5.0
    variance: float = 1.0
    covariance: float = 0.04
    variance_target: float = 1.0
    per_dimension_invariance: bool = False

    def __post_init__(self) -> None:
        for name in ("regression", "invariance", "variance", "covariance", "variance_target"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossWeights.{name} must be >= 0, got {getattr(self, name)}")


def variance_term(codes: Tensor, target: float = 1.0) -> Tensor:
    """VICReg variance hinge of ``codes (B, D)``: mean over dimensions of
    ``relu(target − std)`` (scalar)."""
    std = torch.sqrt(codes.var(dim=0) + VARIANCE_EPS)  # (D,)
    return F.relu(target - std).mean()


def covariance_term(codes: Tensor) -> Tensor:
    """VICReg covariance penalty of ``codes (B, D)``: squared off-diagonal covariances / D."""
    centred = codes - codes.mean(0)
    covariance = centred.T @ centred / max(codes.shape[0] - 1, 1)  # (D, D)
    off_diagonal = covariance - torch.diag(torch.diagonal(covariance))
    return off_diagonal.pow(2).sum() / codes.shape[1]


def invariance_share(a: Tensor, b: Tensor) -> Tensor:
    """Mean over dimensions of the between-view share of variance of paired codes ``a, b
    (B, D)`` (module docstring; 0: views agree, about 1: unrelated)."""
    within = (a - b).pow(2).mean(0) / 2  # (D,)
    total = torch.cat([a, b]).var(dim=0)
    return (within / (total + VARIANCE_EPS)).mean()


def expression_loss(encoder: ExpressionEncoder, crops: Tensor, expression: Tensor,
                    weights: LossWeights) -> tuple[Tensor, dict[str, float]]:
    """Loss of a pair batch: ``crops (2B, 3, S, S)`` (views a then views b), ``expression
    (B, E)``. Returns the scalar loss and its unweighted terms (floats, for logging)."""
    codes = encoder(crops)  # (2B, D)
    a, b = codes.chunk(2)
    predicted = encoder.predict_parameters(codes)  # (2B, E)
    regression = F.mse_loss(predicted, expression.repeat(2, 1))
    invariance = invariance_share(a, b) if weights.per_dimension_invariance else F.mse_loss(a, b)
    variance = (variance_term(a, weights.variance_target)
                + variance_term(b, weights.variance_target)) / 2
    covariance = covariance_term(a) + covariance_term(b)
    total = (weights.regression * regression + weights.invariance * invariance
             + weights.variance * variance + weights.covariance * covariance)
    parts = {"loss": total.item(), "regression": regression.item(),
             "invariance": invariance.item(), "variance": variance.item(),
             "covariance": covariance.item()}
    return total, parts
