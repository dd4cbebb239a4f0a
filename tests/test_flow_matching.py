"""Rectified-flow math, training σ, loss and condition dropout (factorportrait.diffusion)."""

import pytest
import torch

from factorportrait import DiTConfig, FactorPortraitDiT
from factorportrait.diffusion import (ConditionDropout, add_noise, flow_matching_loss,
                                      null_conditions, sample_training_sigmas, shift_sigma,
                                      timestep_from_sigma, velocity_target)
from tests.conftest import make_conditions


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- flow math

def test_add_noise_endpoints_and_per_sample_sigma():
    x0, noise = randn(3, 16, 2, 4, 4, seed=1), randn(3, 16, 2, 4, 4, seed=2)
    x_t = add_noise(x0, noise, torch.tensor([0.0, 1.0, 0.25]))
    assert torch.equal(x_t[0], x0[0])
    assert torch.equal(x_t[1], noise[1])
    assert torch.allclose(x_t[2], 0.75 * x0[2] + 0.25 * noise[2], atol=1e-6)
    assert torch.equal(add_noise(x0, noise, 0.0), x0)


def test_true_velocity_integrates_exactly_to_both_ends():
    x0, noise = randn(4, 16, 2, 4, 4, seed=3), randn(4, 16, 2, 4, 4, seed=4)
    sigma = torch.tensor([0.1, 0.4, 0.7, 0.95])
    x_t, v = add_noise(x0, noise, sigma), velocity_target(x0, noise)
    s = sigma[:, None, None, None, None]
    assert torch.allclose(x_t - s * v, x0, atol=1e-5)  # Euler to σ = 0 in one step
    assert torch.allclose(x_t + (1 - s) * v, noise, atol=1e-5)  # ... and to σ = 1
    assert torch.equal(v, noise - x0)


def test_add_noise_rejects_bad_shapes():
    x0 = torch.zeros(2, 16, 1, 2, 2)
    with pytest.raises(ValueError, match="noise"):
        add_noise(x0, torch.zeros(2, 16, 1, 2, 3), 0.5)
    with pytest.raises(ValueError, match="sigma"):
        add_noise(x0, x0, torch.tensor([0.1, 0.2, 0.3]))


def test_shift_sigma_values():
    sigma = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(shift_sigma(sigma, 1.0), sigma)
    assert shift_sigma(0.5, 5.0) == pytest.approx(2.5 / 3.0)
    assert shift_sigma(0.2, 3.0) == pytest.approx(0.6 / 1.4)
    shifted = shift_sigma(sigma, 5.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert torch.all(shifted[1:-1] > sigma[1:-1]) and torch.all(shifted.diff() > 0)
    assert timestep_from_sigma(0.25) == 250.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="shift"):
            shift_sigma(sigma, bad)


def test_training_sigmas_deterministic_and_distributed():
    draw = lambda seed, **kw: sample_training_sigmas(  # noqa: E731
        20000, torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    plain = draw(0, shift=1.0)
    assert plain.shape == (20000,) and plain.min() >= 0 and plain.max() <= 1
    assert abs(plain.mean().item() - 0.5) < 0.01
    # σ = shift(u) is monotone, so its median is shift(median(u)).
    assert abs(draw(0, shift=5.0).median().item() - 2.5 / 3.0) < 0.01
    logit = draw(2, shift=3.0, distribution="logit_normal", logit_mean=1.0)
    expected = shift_sigma(torch.sigmoid(torch.tensor(1.0)), 3.0).item()
    assert abs(logit.median().item() - expected) < 0.01
    with pytest.raises(ValueError, match="distribution.*uniform"):
        sample_training_sigmas(2, distribution="cosine")
    with pytest.raises(ValueError, match="batch"):
        sample_training_sigmas(0)


# ---------------------------------------------------------------------------- loss

class OracleVelocity(torch.nn.Module):
    """Returns the exact velocity toward a known x0: ``v = (x_t − x0) / σ``."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = x0

    def forward(self, x_t, timestep, conditions):
        sigma = (timestep / 1000.0)[:, None, None, None, None]
        return (x_t - self.x0) / sigma


def test_loss_is_mse_to_the_velocity_target():
    config = DiTConfig.tiny()
    x0, conditions = make_conditions(config, batch=3, frames=2)
    zero_model = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    loss, details = flow_matching_loss(zero_model, x0, conditions,
                                       torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # replay the documented draw order: σ, then ε
    sigma = sample_training_sigmas(3, g)
    noise = torch.randn(x0.shape, generator=g)
    assert torch.equal(details["sigma"], sigma)
    assert torch.allclose(details["timestep"], 1000 * sigma)
    assert loss.item() == pytest.approx((noise - x0).square().mean().item(), rel=1e-6)
    oracle_loss, _ = flow_matching_loss(OracleVelocity(x0), x0, conditions,
                                        torch.Generator().manual_seed(5))
    assert oracle_loss.item() < 1e-8


def test_dit_loss_is_finite_deterministic_and_trains_new_paths():
    config = DiTConfig.tiny()
    torch.manual_seed(0)
    model = FactorPortraitDiT(config)
    x0, conditions = make_conditions(config, batch=2, frames=2, context_length=None)
    dropout = ConditionDropout(expression=0.5, all=0.2)
    loss, details = flow_matching_loss(model, x0, conditions, torch.Generator().manual_seed(1),
                                       dropout=dropout)
    again, _ = flow_matching_loss(model, x0, conditions, torch.Generator().manual_seed(1),
                                  dropout=dropout)
    assert torch.isfinite(loss) and loss.ndim == 0 and torch.equal(loss, again)
    assert details["per_sample_loss"].shape == (2,)
    assert set(details["dropped"]) == {"expression", "pose", "camera", "reference"}
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["patch_embedding.weight"][:, 16:].abs().sum() > 0  # zero-init, still learns
    assert grads["expression_controller.output.weight"].abs().sum() > 0
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)


# ---------------------------------------------------------------------------- condition nulls

def test_null_conditions_exact_values_per_sample():
    _, conditions = make_conditions(DiTConfig.tiny(), batch=3, frames=2)
    mask = torch.tensor([True, False, True])
    nulled = null_conditions(conditions, {"all"}, mask)
    for row in (0, 2):
        assert torch.equal(nulled.expression[row], torch.zeros_like(conditions.expression[row]))
        assert torch.equal(nulled.normal_latents[row], torch.zeros(16, 2, 8, 8))
        assert torch.equal(nulled.reference_latent[row], torch.zeros(16, 1, 8, 8))
        identity = conditions.rays[row, :, :1].expand(-1, 3, -1, -1)
        assert torch.equal(nulled.rays[row], identity)  # identity camera in every frame
    for field in ("expression", "normal_latents", "rays", "reference_latent"):
        assert torch.equal(getattr(nulled, field)[1], getattr(conditions, field)[1])
    assert nulled.context is conditions.context


def test_null_conditions_drops_only_what_is_named():
    _, conditions = make_conditions(DiTConfig.tiny(), batch=2, frames=2)
    no_expression = null_conditions(conditions, {"expression"})
    assert torch.equal(no_expression.expression, torch.zeros_like(conditions.expression))
    for field in ("normal_latents", "rays", "reference_latent"):
        assert getattr(no_expression, field) is getattr(conditions, field)
    no_camera = null_conditions(conditions, ["camera"])
    assert torch.equal(no_camera.rays[:, :, 2], conditions.rays[:, :, 0])
    conditions.expression = None
    assert null_conditions(conditions, {"expression"}).expression is None
    with pytest.raises(ValueError, match="unknown conditions.*'light'"):
        null_conditions(conditions, {"light"})
    with pytest.raises(ValueError, match="mask"):
        null_conditions(conditions, {"pose"}, torch.tensor([True]))


def test_condition_dropout_rates_and_determinism():
    dropout = ConditionDropout(expression=0.3, pose=0.2, camera=0.1, reference=0.0, all=0.1)
    masks = dropout.sample_masks(40000, torch.Generator().manual_seed(0))
    for name, rate in (("expression", 0.3), ("pose", 0.2), ("camera", 0.1), ("reference", 0.0)):
        expected = 1 - (1 - rate) * (1 - 0.1)
        assert abs(masks[name].float().mean().item() - expected) < 0.01, name
    everything = torch.stack(list(masks.values())).all(dim=0)
    assert abs(everything.float().mean().item() - 0.1) < 0.01
    again = dropout.sample_masks(40000, torch.Generator().manual_seed(0))
    assert all(torch.equal(masks[name], again[name]) for name in masks)
    with pytest.raises(ValueError, match="ConditionDropout.pose"):
        ConditionDropout(pose=1.5)


def test_condition_dropout_apply_uses_null_conditions():
    _, conditions = make_conditions(DiTConfig.tiny(), batch=64, frames=2)
    dropped, masks = ConditionDropout(expression=0.5, pose=0.5, camera=0.5, reference=0.5,
                                      all=0.0).apply(conditions, torch.Generator().manual_seed(3))
    expected = conditions
    for name, mask in masks.items():
        assert 0 < mask.sum() < 64
        expected = null_conditions(expected, {name}, mask)
    for field in ("expression", "normal_latents", "rays", "reference_latent"):
        assert torch.equal(getattr(dropped, field), getattr(expected, field))
    zero_rows = (dropped.expression.flatten(1) == 0).all(dim=1)
    assert torch.equal(zero_rows, masks["expression"])
