"""FactorPortraitDiT: zero-init equivalence to Wan, live condition paths, per-frame AdaLN."""

import pytest
import torch

from factorportrait import DiTConfig, FactorPortraitDiT
from factorportrait.models import backbone
from factorportrait.models.dit import block_forward
from tests.conftest import make_conditions


def perturb_new_paths(model: FactorPortraitDiT, scale: float = 0.5) -> None:
    """Give the zero-initialised condition paths random weights."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        extra = model.patch_embedding.weight[:, model.config.latent_channels:]
        extra.copy_(torch.randn(extra.shape, generator=g) * scale)
        output = model.expression_controller.output
        output.weight.copy_(torch.randn(output.weight.shape, generator=g) * scale)
        output.bias.copy_(torch.randn(output.bias.shape, generator=g) * scale)


@pytest.fixture
def loaded(wan_checkpoint):
    path, wan = wan_checkpoint
    return FactorPortraitDiT.from_wan(path, DiTConfig.tiny()).eval(), wan


@pytest.mark.parametrize("with_context", [True, False])
def test_zero_init_equals_plain_wan_on_prepended_reference(loaded, with_context):
    model, wan = loaded
    config = model.config
    noisy, conditions = make_conditions(config, batch=2, frames=3,
                                        context_length=5 if with_context else None)
    timestep = torch.tensor([37.0, 811.0])
    context = conditions.context if with_context else model.null_context.expand(2, -1, -1)
    with torch.no_grad():
        ours = model(noisy, timestep, conditions)
        plain = backbone.wan_reference_forward(
            wan, torch.cat([conditions.reference_latent, noisy], dim=2), timestep, context)
    assert ours.shape == noisy.shape
    assert (ours - plain[:, :, 1:]).abs().max().item() <= 1e-5


def test_per_frame_adaln_equals_diffsynth_per_token_modulation(loaded):
    """Our broadcast-per-frame block equals diffsynth's DiTBlock fed the expanded per-token
    modulation (B, L, 6, D): the same math without materialising it."""
    model, _ = loaded
    block = model.blocks[0]
    batch, frames, tokens, dim = 2, 4, 6, model.config.dim
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, frames, tokens, dim, generator=g)
    context = torch.randn(batch, 5, dim, generator=g)
    modulation = torch.randn(batch, frames, 6, dim, generator=g)
    freqs = backbone.rope_frequencies(model.config.head_dim, frames, 2, 3, torch.device("cpu"))
    with torch.no_grad():
        ours = block_forward(block, x, context, modulation, freqs)
        per_token = modulation[:, :, None].expand(-1, -1, tokens, -1, -1).reshape(
            batch, frames * tokens, 6, dim)
        theirs = block(x.reshape(batch, frames * tokens, dim), context, per_token, freqs)
    assert torch.allclose(ours.reshape_as(theirs), theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("field", ["rays", "normal_latents", "expression"])
def test_each_condition_changes_the_output_once_paths_are_live(tiny_config, field):
    torch.manual_seed(0)
    model = FactorPortraitDiT(tiny_config).eval()
    noisy, conditions = make_conditions(tiny_config)
    timestep = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        frozen = model(noisy, timestep, conditions)
        changed = conditions.map(lambda t: t)
        setattr(changed, field, getattr(conditions, field) + 1.0)
        assert torch.equal(model(noisy, timestep, changed), frozen)  # zero-init: no effect
        perturb_new_paths(model)
        live_before = model(noisy, timestep, conditions)
        live_after = model(noisy, timestep, changed)
    assert (live_after - live_before).abs().max().item() > 1e-3


def test_expression_offset_of_frame_i_modulates_frame_i_only(tiny_config):
    torch.manual_seed(0)
    model = FactorPortraitDiT(tiny_config).eval()
    perturb_new_paths(model)
    _, conditions = make_conditions(tiny_config, batch=1, frames=4)
    timestep = torch.tensor([250.0])
    target = 2  # generated latent frame index (0-based); DiT frame 1 + target
    delta = torch.zeros(1, 4, tiny_config.dim)
    delta[:, target] = 1.0
    handle = model.expression_controller.register_forward_hook(lambda m, i, out: out + delta)
    with torch.no_grad():
        base = model.time_projection(model.frame_embeddings(timestep, conditions.expression, 4))
        handle.remove()
        reference = model.time_projection(
            model.frame_embeddings(timestep, conditions.expression, 4))
    changed = (base - reference).abs().amax(dim=(0, 2))  # per DiT frame, (B, 1+F, 6D)
    assert changed[1 + target] > 1e-3
    assert torch.all(changed[torch.arange(5) != 1 + target] == 0)
    # the reference frame never gets an expression offset
    no_expr = model.frame_embeddings(timestep, None, 4)
    assert torch.equal(reference[:, 0], model.time_projection(no_expr)[:, 0])


def test_gradients_reach_every_trainable_parameter(tiny_config):
    torch.manual_seed(0)
    model = FactorPortraitDiT(tiny_config)
    noisy, conditions = make_conditions(tiny_config)
    model(noisy, torch.tensor([10.0, 900.0]), conditions).square().mean().backward()
    # at init the zero-initialised projections themselves receive gradient
    assert model.expression_controller.output.weight.grad.abs().sum() > 0
    assert model.patch_embedding.weight.grad[:, 16:].abs().sum() > 0
    model.zero_grad(set_to_none=True)
    perturb_new_paths(model)
    model(noisy, torch.tensor([10.0, 900.0]), conditions).square().mean().backward()
    dead = [name for name, p in model.named_parameters()
            if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_gradient_checkpointing_matches(tiny_config):
    torch.manual_seed(0)
    model = FactorPortraitDiT(tiny_config)
    perturb_new_paths(model)
    noisy, conditions = make_conditions(tiny_config)
    timestep = torch.tensor([10.0, 900.0])
    grads = []
    for enabled in (False, True):
        model.zero_grad(set_to_none=True)
        model.enable_gradient_checkpointing(enabled)
        model(noisy, timestep, conditions).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_condition_parameters_are_the_new_paths(tiny_config):
    model = FactorPortraitDiT(tiny_config)
    ids = {id(p) for p in model.condition_parameters()}
    names = {name for name, p in model.named_parameters() if id(p) in ids}
    assert "patch_embedding.weight" in names
    assert all(n.startswith(("patch_embedding", "expression_controller")) for n in names)
