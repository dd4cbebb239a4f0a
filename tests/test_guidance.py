"""Guidance schedules (DeX-Portrait Eq. 4, 5) and their linear combination."""

import pytest
import torch

from factorportrait import DiTConfig
from factorportrait.diffusion import (GUIDANCE_MODES, Guidance, branch_conditions, combine,
                                      guidance_weights, null_conditions,
                                      progressive_expression_blend)
from tests.conftest import make_conditions


def eq5_weights(t: int, omega: float) -> dict[str, float]:
    """Eq. 5 transcribed for 35 steps (t = 35 … 1), each ε̃ expanded with Eq. 4:
    ε̃(x) = ω ε̂(x) + (1 − ω) ε̂(∅)."""
    if 30 < t <= 35:
        a_exp, a_full = 1.0, 0.0
    elif 25 < t <= 30:
        a_exp, a_full = (t - 25) / 5, (30 - t) / 5
    else:
        a_exp, a_full = 0.0, 1.0
    return {"full": omega * a_full, "no_expression": omega * a_exp,
            "null": (a_exp + a_full) * (1 - omega)}


@pytest.mark.parametrize("omega", [2.5, 1.0, 4.0])
def test_progressive_hybrid_matches_eq5_at_35_steps(omega):
    schedule = guidance_weights("progressive_hybrid", 35, omega)
    assert len(schedule) == 35
    for step in schedule:
        expected = eq5_weights(35 - step.step, omega)
        for branch, weight in expected.items():
            assert step.weights[branch] == pytest.approx(weight, abs=1e-12), (step.step, branch)
    alphas = [step.expression_blend for step in schedule]
    assert alphas == pytest.approx([0.0] * 5 + [0.0, 0.2, 0.4, 0.6, 0.8] + [1.0] * 25)


@pytest.mark.parametrize("num_steps, expected", [
    (10, [0.0, 0.0] + [1.0] * 8),  # 1 excluded, 1 blend step (α = 0/1), 8 full
    (14, [0.0, 0.0, 0.0, 0.5] + [1.0] * 10),
    (70, [0.0] * 10 + [k / 10 for k in range(10)] + [1.0] * 50),
    (7, [0.0, 0.0] + [1.0] * 5),
    (1, [1.0]),
])
def test_progressive_blend_scales_5_5_25_to_other_step_counts(num_steps, expected):
    assert progressive_expression_blend(num_steps) == pytest.approx(expected)


def test_custom_fractions_and_weights_of_other_modes():
    assert progressive_expression_blend(8, 0.25, 0.5) == pytest.approx(
        [0, 0, 0, 0.25, 0.5, 0.75, 1, 1])
    assert progressive_expression_blend(4, 0.0, 0.0) == [1.0] * 4
    for mode in GUIDANCE_MODES:
        for step in guidance_weights(mode, 12, 3.0):
            assert sum(step.weights.values()) == pytest.approx(1.0)
    assert guidance_weights("none", 3, 7.0)[0].weights == {"full": 1.0}
    assert guidance_weights("cfg", 3, 5.0)[2].weights == {"full": 5.0, "null": -4.0}
    expression = guidance_weights("expression", 3, 2.0)[0]
    assert expression.weights == {"full": 2.0, "no_expression": -1.0}
    assert expression.branches == ("full", "no_expression")
    hybrid = guidance_weights("progressive_hybrid", 35, 2.5)
    assert hybrid[0].branches == ("no_expression", "null")
    assert hybrid[7].branches == ("full", "no_expression", "null")
    assert hybrid[20].branches == ("full", "null")
    assert guidance_weights("cfg", 2, 1.0)[0].branches == ("full",)  # ω = 1: one pass


def test_bad_parameters_raise_naming_the_input():
    with pytest.raises(ValueError, match="mode must be one of.*progressive_hybrid"):
        guidance_weights("hybrid", 10)
    with pytest.raises(ValueError, match="num_steps"):
        guidance_weights("cfg", 0)
    with pytest.raises(ValueError, match="num_steps"):
        progressive_expression_blend(0)
    with pytest.raises(ValueError, match="scale"):
        Guidance("cfg", scale=-1.0)
    with pytest.raises(ValueError, match="blend_fraction"):
        progressive_expression_blend(10, 0.5, 1.5)
    with pytest.raises(ValueError, match="exclude_fraction \\+ blend_fraction"):
        Guidance(exclude_fraction=0.6, blend_fraction=0.6)


def test_combine_is_the_cfg_formula_and_exact_at_scale_one():
    g = torch.Generator().manual_seed(0)
    v_c, v_e, v_u = (torch.randn(2, 16, 2, 4, 4, generator=g) for _ in range(3))
    predictions = {"full": v_c, "no_expression": v_e, "null": v_u}
    cfg = combine(predictions, guidance_weights("cfg", 1, 3.5)[0].weights)
    assert torch.allclose(cfg, v_u + 3.5 * (v_c - v_u), atol=1e-5)
    step = guidance_weights("progressive_hybrid", 14, 2.5)[3]  # α = 0.5
    hybrid = combine(predictions, step.weights)
    assert torch.allclose(hybrid, v_u + 2.5 * (0.5 * v_c + 0.5 * v_e - v_u), atol=1e-5)
    assert torch.equal(combine(predictions, guidance_weights("cfg", 1, 1.0)[0].weights), v_c)
    assert torch.equal(combine({"full": v_c}, {"full": 1.0, "null": 0.0}), v_c)
    with pytest.raises(ValueError, match="lacks branch 'null'"):
        combine({"full": v_c}, {"full": 2.0, "null": -1.0})


def test_branch_conditions_are_the_shared_nulls():
    _, conditions = make_conditions(DiTConfig.tiny(), batch=2, frames=2)
    assert branch_conditions(conditions, "full") is conditions
    no_expression = branch_conditions(conditions, "no_expression")
    assert torch.equal(no_expression.expression, torch.zeros_like(conditions.expression))
    assert no_expression.normal_latents is conditions.normal_latents
    null = branch_conditions(conditions, "null")
    expected = null_conditions(conditions, {"all"})
    for field in ("expression", "normal_latents", "rays", "reference_latent"):
        assert torch.equal(getattr(null, field), getattr(expected, field))
    with pytest.raises(ValueError, match="branch must be one of"):
        branch_conditions(conditions, "uncond")
