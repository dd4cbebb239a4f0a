"""Euler flow sampler: Wan's schedule, guidance batching, determinism, exactness."""

import pytest
import torch

from factorportrait import DiTConfig, FactorPortraitDiT, PortraitConditions
from factorportrait.diffusion import Guidance, flow_sigmas, guidance_weights, sample
from tests.conftest import make_conditions
from tests.pipeline_helpers import tiny_dit


@pytest.fixture(scope="module")
def live_model() -> FactorPortraitDiT:
    return tiny_dit()


@pytest.fixture
def conditions() -> PortraitConditions:
    return make_conditions(DiTConfig.tiny(), batch=2, frames=2, context_length=None)[1]


class OracleVelocity(torch.nn.Module):
    """Test double: the exact velocity toward a fixed x0, ``v = (x_t − x0)/σ``; records the
    batch size of every call."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0, self.calls = x0, []

    def forward(self, x_t, timestep, conditions):
        self.calls.append(x_t.shape[0])
        sigma = (timestep.double() / 1000.0)[:, None, None, None, None]
        return ((x_t.double() - self.x0.repeat(x_t.shape[0] // self.x0.shape[0], 1, 1, 1, 1))
                / sigma).float()


@pytest.mark.parametrize("num_steps, shift", [(50, 5.0), (35, 5.0), (10, 3.0), (1, 1.0)])
def test_sigmas_equal_diffsynth_wan_schedule(num_steps, shift):
    from diffsynth.diffusion.flow_match import FlowMatchScheduler

    theirs, timesteps = FlowMatchScheduler("Wan").set_timesteps_wan(num_steps, shift=shift)
    ours = flow_sigmas(num_steps, shift)
    assert ours.shape == (num_steps + 1,) and ours[0] == 1.0 and ours[-1] == 0.0
    assert torch.allclose(ours[:-1].float(), theirs, atol=1e-6, rtol=0)
    assert torch.allclose(1000 * ours[:-1].float(), timesteps, atol=1e-3, rtol=0)


@pytest.mark.parametrize("guidance", [None, Guidance("cfg", 4.0)])
def test_true_velocity_model_recovers_x0(conditions, guidance):
    x0 = torch.randn(2, 16, 2, 8, 8, generator=torch.Generator().manual_seed(9))
    oracle = OracleVelocity(x0)
    out = sample(oracle, conditions, generator=torch.Generator().manual_seed(1), num_steps=4,
                 guidance=guidance, progress=False)
    assert torch.allclose(out, x0, atol=1e-5)  # guidance weights sum to 1
    assert oracle.calls == [2 if guidance is None else 4] * 4  # cond + null in one batch


def test_batched_and_unbatched_guidance_agree(live_model, conditions):
    guidance = Guidance("progressive_hybrid", 2.5)  # 14 steps: one step runs all 3 branches
    assert len(guidance.schedule(14)[3].branches) == 3
    kwargs = dict(num_steps=14, guidance=guidance, progress=False)
    batched = sample(live_model, conditions, generator=torch.Generator().manual_seed(3),
                     batch_cfg=True, **kwargs)
    unbatched = sample(live_model, conditions, generator=torch.Generator().manual_seed(3),
                       batch_cfg=False, **kwargs)
    assert torch.allclose(batched, unbatched, atol=1e-5, rtol=0)


def test_seeds_reproduce_and_differ(live_model, conditions):
    run = lambda seed: sample(live_model, conditions, num_steps=3, guidance="cfg",  # noqa: E731
                              generator=torch.Generator().manual_seed(seed), progress=False)
    first = run(0)
    assert first.shape == (2, 16, 2, 8, 8) and first.dtype == torch.float32
    assert torch.equal(first, run(0))
    assert (first - run(1)).abs().max() > 1e-2


def test_cfg_scale_one_is_exactly_the_conditional_sampler(live_model, conditions):
    noise = torch.randn(2, 16, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    plain = sample(live_model, conditions, noise=noise, num_steps=3, progress=False)
    for mode in ("cfg", "expression", "progressive_hybrid"):
        guided = sample(live_model, conditions, noise=noise, num_steps=3, progress=False,
                        guidance=Guidance(mode, 1.0, 0.0, 0.0))
        assert torch.equal(guided, plain), mode


def test_sampler_matches_hand_written_dex_eq5_loop(live_model, conditions):
    """Eq. 5 in its usual CFG form, with the null conditions built by hand."""
    omega, steps = 2.5, 14
    no_expression = PortraitConditions(conditions.reference_latent, conditions.normal_latents,
                                       conditions.rays, torch.zeros_like(conditions.expression))
    null = PortraitConditions(torch.zeros_like(conditions.reference_latent),
                              torch.zeros_like(conditions.normal_latents),
                              conditions.rays[:, :, :1].expand_as(conditions.rays).clone(),
                              torch.zeros_like(conditions.expression))
    noise = torch.randn(2, 16, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    sigmas = flow_sigmas(steps).tolist()
    alphas = [s.expression_blend for s in guidance_weights("progressive_hybrid", steps)]
    x = noise.clone()
    with torch.no_grad():
        for k in range(steps):
            t = torch.full((2,), 1000 * sigmas[k])
            v_c, v_e, v_u = (live_model(x, t, c) for c in (conditions, no_expression, null))
            v = v_u + omega * (alphas[k] * v_c + (1 - alphas[k]) * v_e - v_u)
            x = x + (sigmas[k + 1] - sigmas[k]) * v
    ours = sample(live_model, conditions, noise=noise, num_steps=steps, progress=False,
                  guidance=Guidance("progressive_hybrid", omega))
    assert torch.allclose(ours, x, atol=1e-5, rtol=0)


def test_missing_expression_merges_branches_and_callback_sees_every_step(conditions):
    conditions.expression = None
    oracle = OracleVelocity(torch.zeros(2, 16, 2, 8, 8))
    seen = []
    sample(oracle, conditions, num_steps=5, guidance="progressive_hybrid", progress=False,
           callback=lambda step, sigma, latents: seen.append((step, sigma, latents.shape)))
    assert oracle.calls == [4] * 5  # full (= no_expression) + null, never three branches
    assert [s[0] for s in seen] == list(range(5))
    assert [s[1] for s in seen] == flow_sigmas(5).tolist()[:-1]


def test_bad_inputs_raise(conditions):
    oracle = OracleVelocity(torch.zeros(2, 16, 2, 8, 8))
    with pytest.raises(ValueError, match="noise has shape"):
        sample(oracle, conditions, noise=torch.zeros(2, 16, 3, 8, 8), progress=False)
    with pytest.raises(ValueError, match="num_steps"):
        sample(oracle, conditions, num_steps=0, progress=False)
    with pytest.raises(ValueError, match="mode must be one of"):
        sample(oracle, conditions, guidance="classifier_free", progress=False)
    with pytest.raises(ValueError, match="shift"):
        flow_sigmas(10, shift=0.0)
