import pytest

from factorportrait import DiTConfig


def test_presets_carry_wan_sizes():
    small, large = DiTConfig.wan_1_3b(), DiTConfig.wan_14b()
    assert (small.dim, small.ffn_dim, small.num_heads, small.num_layers) == (1536, 8960, 12, 30)
    assert (large.dim, large.ffn_dim, large.num_heads, large.num_layers) == (5120, 13824, 40, 40)
    for config in (small, large):
        assert (config.text_dim, config.freq_dim, config.patch_size) == (4096, 256, (1, 2, 2))
        assert (config.latent_channels, config.eps, config.in_channels) == (16, 1e-6, 72)
    tiny = DiTConfig.tiny()
    assert tiny.num_layers == 2 and 64 <= tiny.dim <= 128 and tiny.in_channels == 72


def test_config_is_frozen_and_round_trips():
    config = DiTConfig.tiny()
    with pytest.raises(Exception):
        config.dim = 3  # type: ignore[misc]
    assert DiTConfig.from_dict(config.to_dict()) == config
    assert DiTConfig.preset("wan_1_3b") == DiTConfig.wan_1_3b()


@pytest.mark.parametrize("overrides, field", [
    (dict(dim=0), "dim"),
    (dict(num_layers=-1), "num_layers"),
    (dict(num_heads=3), "num_heads"),       # 64 % 3
    (dict(num_heads=4), "num_heads"),       # head_dim 16 breaks the 3D RoPE split
    (dict(patch_size=(2, 2, 2)), "patch_size"),
    (dict(eps=0.0), "eps"),
    (dict(ray_channels=12), "ray_channels"),
    (dict(expression_heads=3), "expression_heads"),
    (dict(freq_dim=63), "freq_dim"),
])
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        DiTConfig.tiny(**overrides)


def test_unknown_preset_and_fields_are_refused():
    with pytest.raises(ValueError, match="wan_1_3b"):
        DiTConfig.preset("wan_2b")
    with pytest.raises(ValueError, match="bogus"):
        DiTConfig.from_dict({**DiTConfig.tiny().to_dict(), "bogus": 1})
