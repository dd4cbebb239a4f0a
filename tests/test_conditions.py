import pytest
import torch

from tests.conftest import make_conditions


@pytest.mark.parametrize("field, value, message", [
    ("reference_latent", lambda c: c.reference_latent[:, :8], "reference_latent"),
    ("reference_latent", lambda c: c.reference_latent.repeat(1, 1, 2, 1, 1), "reference_latent"),
    ("normal_latents", lambda c: c.normal_latents[..., :4], "normal_latents"),
    ("rays", lambda c: c.rays[:, :, 1:], "rays"),
    ("rays", lambda c: c.rays[:, :6], "rays"),
    ("expression", lambda c: c.expression[:, :-1], "expression"),
    ("expression", lambda c: c.expression[..., :64], "expression"),
    ("context", lambda c: c.context[..., :3], "context"),
    ("rays", lambda c: c.rays.long(), "floating-point"),
    ("normal_latents", lambda c: c.normal_latents.numpy(), "torch.Tensor"),
    ("expression", lambda c: torch.where(c.expression > 2, float("nan"), c.expression),
     "NaN"),
    ("rays", lambda c: c.rays[0], "dimensions"),
])
def test_malformed_condition_raises_naming_the_field(tiny_config, field, value, message):
    _, conditions = make_conditions(tiny_config)
    setattr(conditions, field, value(conditions))
    with pytest.raises(ValueError, match=message) as error:
        conditions.validate(text_dim=tiny_config.text_dim)
    assert field in str(error.value)


def test_valid_conditions_pass_and_forward_rejects_mismatched_latents(tiny_config):
    from factorportrait import FactorPortraitDiT

    noisy, conditions = make_conditions(tiny_config)
    assert conditions.validate(noisy, text_dim=tiny_config.text_dim) is conditions
    model = FactorPortraitDiT(tiny_config)
    with pytest.raises(ValueError, match="noisy_latents"):
        model(noisy[:, :, :2], torch.tensor([1.0, 2.0]), conditions)
    with pytest.raises(ValueError, match="timestep"):
        model(noisy, torch.tensor([1.0]), conditions)
