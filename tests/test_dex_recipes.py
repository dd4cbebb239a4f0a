"""DeX-Portrait / C3 recipes: every `conditioning=` option composes into the DiTConfig it names
for every model preset, c3 turns the data's landmarks on, the DeX curriculum carries DeX §4.1's
numbers, the new ablation rows select their conditioning, a tiny run of `conditioning=dex` and of
`conditioning=c3_landmarks` trains its new paths, and the dit benchmark's variants are the
configs it says."""

import argparse
import math

import pytest
import torch

from factorportrait import DiTConfig, FactorPortraitDiT
from factorportrait.benchmarks import dit as dit_benchmark
from factorportrait.training import TrainConfig, loss_curve, train
from tests.training_recipes import RECIPES, compose_recipe, tiny_config

# option: (head_pose_rays, reference warping, expression_injection, expression_condition)
CONDITIONING = {
    "factorportrait": (False, False, "adaln", "codes"),
    "dex_ray_map": (True, False, "adaln", "codes"),
    "dex_warp": (False, True, "adaln", "codes"),
    "dex_dual_branch": (True, True, "adaln", "codes"),
    "dex_cross_attention": (False, False, "cross_attention", "codes"),
    "dex": (True, True, "cross_attention", "codes"),
    "c3_landmarks": (False, False, "cross_attention", "landmarks"),
}
PRESETS = {"tiny": DiTConfig.tiny(), "wan_1_3b": DiTConfig.wan_1_3b(),
           "wan_14b": DiTConfig.wan_14b()}
WAN = ["model.wan_weights=/weights/wan.safetensors", "data.options.root=/data",
       "data.options.vae=/vae"]
ABLATIONS = {"dex_dual_branch": "dex_dual_branch", "dex_no_ray_map": "dex_warp",
             "dex_no_warping": "dex_ray_map", "c3_landmarks": "c3_landmarks"}
SHORT = ["stage.steps=3", "validation.every=0", "checkpoint.every=100"]


def test_every_conditioning_file_is_listed_here():
    assert sorted(p.stem for p in (RECIPES / "conditioning").glob("*.yaml")) == sorted(
        CONDITIONING)


@pytest.mark.parametrize("model", sorted(PRESETS))
@pytest.mark.parametrize("option", sorted(CONDITIONING))
def test_conditioning_composes_into_its_dit_config(option, model):
    config = TrainConfig.from_dict(compose_recipe(f"conditioning={option}", f"model={model}",
                                                  *WAN))
    dit, preset = config.model.dit_config(), PRESETS[model]
    rays, warp, injection, condition = CONDITIONING[option]
    assert dit.head_pose_rays is rays
    every_second = tuple(range(0, preset.num_layers, 2))  # (0,) for tiny's 2 blocks
    assert dit.reference_warp_blocks == (every_second if warp else ())
    assert (dit.expression_injection, dit.expression_condition) == (injection, condition)
    assert dit.in_channels == 72 + 24 * rays
    changed = {"head_pose_rays", "reference_warp_blocks", "expression_injection",
               "expression_condition"}
    assert all(getattr(dit, f) == getattr(preset, f)  # nothing else moves
               for f in preset.to_dict() if f not in changed)


def test_the_factorportrait_option_is_the_default_model():
    default = TrainConfig.from_dict(compose_recipe("scale=tiny"))
    named = TrainConfig.from_dict(compose_recipe("scale=tiny", "conditioning=factorportrait"))
    assert named.model.dit_config() == default.model.dit_config() == DiTConfig.tiny()
    assert default.model.overrides == {}  # conditioning: null leaves the recipe as it was


def test_c3_turns_on_the_landmarks_of_either_data_source():
    toy = compose_recipe("scale=tiny", "conditioning=c3_landmarks")
    assert toy["model"]["overrides"]["landmark_points"] == 478
    assert toy["data"]["options"] == {"num_items": 64, "landmark_points": 478}
    fewer = compose_recipe("scale=tiny", "conditioning=c3_landmarks",
                           "model.overrides.landmark_points=7")
    assert fewer["data"]["options"]["landmark_points"] == 7  # the toy data follows the model
    real = TrainConfig.from_dict(compose_recipe("conditioning=c3_landmarks", *WAN))
    assert real.data.options["landmarks"] is True and "landmark_points" not in real.data.options
    assert real.model.dit_config().landmark_points == 478  # MediaPipe's face mesh
    plain = compose_recipe("scale=tiny", "conditioning=dex")
    assert plain["data"]["options"] == {"num_items": 64}


def test_dex_curriculum_carries_dex_section_4_1(tmp_path):
    recipe = compose_recipe("curriculum=dex", "conditioning=dex", *WAN)
    assert recipe["curriculum"]["stages"] == ["dex_diffusion", "dex_temporal"]
    stages = {name: TrainConfig.from_dict(compose_recipe(f"stage={name}", "conditioning=dex",
                                                         *WAN)).stage
              for name in recipe["curriculum"]["stages"]}
    diffusion, temporal = stages["dex_diffusion"], stages["dex_temporal"]
    assert diffusion.lr == temporal.lr == 1e-5
    assert (diffusion.steps, temporal.steps) == (120_000, 80_000)
    assert (diffusion.frames, temporal.frames) == (5, 25)  # temporal: 24 frames -> 4k + 1
    assert (diffusion.init_from, temporal.init_from) == (None, "dex_diffusion")
    trainable = [TrainConfig.from_dict(compose_recipe(f"stage={name}", *WAN)).model.trainable
                 for name in stages]
    assert trainable == ["full", "self_attention_and_new"]  # no separate temporal module
    assert diffusion.mixture == temporal.mixture == {"phone": 0.5, "studio": 0.5,
                                                     "viewsweep": 0.0, "dynamicsweep": 0.0}
    tiny = tiny_config(tmp_path, "stage=dex_temporal", "conditioning=dex")
    assert (tiny.stage.frames, tiny.stage.lr) == (25, 1e-5) and tiny.lr == pytest.approx(2e-4)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_rows_select_their_conditioning(name):
    from factorportrait.demo.ablation import ablation_config, ablation_names

    assert name in ablation_names()
    ablation = ablation_config(name).ablation
    assert ablation.name == name and list(ablation.drop) == []
    assert list(ablation.train_overrides) == [f"conditioning={ABLATIONS[name]}"]
    recipe = TrainConfig.from_dict(compose_recipe("model=tiny", *WAN, *ablation.train_overrides))
    rays, warp, injection, condition = CONDITIONING[ABLATIONS[name]]
    dit = recipe.model.dit_config()
    assert (dit.head_pose_rays, bool(dit.reference_warp_blocks), dit.expression_injection,
            dit.expression_condition) == (rays, warp, injection, condition)


def test_demo_stages_of_an_ablation_train_its_conditioning():
    from factorportrait.demo.ablation import ablation_config
    from factorportrait.demo.train import stage_config

    dual = stage_config(ablation_config("dex_dual_branch"), "stage1").model.dit_config()
    assert dual.head_pose_rays and dual.reference_warp_blocks == (0,)
    assert (dual.dim, dual.num_layers) == (192, 4)  # the demo's sizes stay
    c3 = stage_config(ablation_config("c3_landmarks"), "stage3")
    assert c3.model.dit_config().expression_condition == "landmarks"
    assert c3.data.options["landmarks"] is True and c3.data.options["latents"] is True


def _trained(tmp_path, *overrides: str) -> tuple[FactorPortraitDiT, list[float]]:
    result = train(tiny_config(tmp_path, *SHORT, *overrides))
    losses = list(loss_curve(result.stage_dir).values())
    return FactorPortraitDiT.from_pretrained(result.final_weights), losses


def _moved_off_zero(model: FactorPortraitDiT, names: list[str]) -> list[str]:
    weights = dict(model.named_parameters())
    return [name for name in names if weights[name].abs().max() == 0]


def test_tiny_dex_curriculum_trains_every_dex_path_then_self_attention(tmp_path):
    model, losses = _trained(tmp_path, "conditioning=dex", "stage=dex_diffusion")
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    config = model.config
    assert config.head_pose_rays and config.reference_warp_blocks == (0,)
    assert config.expression_injection == "cross_attention"
    zero_init = ["reference_warp.projections.0.weight", "expression_attention.0.o.weight",
                 "expression_attention.1.o.weight"]
    assert not _moved_off_zero(model, zero_init)
    assert model.patch_embedding.weight[:, 72:].abs().max() > 0  # the head-ray channels
    temporal, losses = _trained(tmp_path, "conditioning=dex", "stage=dex_temporal",
                                "stage.steps=2")  # 25 frames, from dex_diffusion's weights
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    before, after = model.state_dict(), temporal.state_dict()
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    assert any(".self_attn." in name for name in changed)
    assert any(name.startswith("reference_warp.") for name in changed)
    assert not any(".ffn." in name or ".cross_attn." in name for name in changed)


def test_tiny_c3_run_trains_on_478_landmarks(tmp_path):
    model, losses = _trained(tmp_path, "conditioning=c3_landmarks")
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert model.config.expression_condition == "landmarks"
    assert model.landmark_encoder.point_embedding.shape[0] == 478
    assert not hasattr(model, "expression_controller")
    assert not _moved_off_zero(model, ["expression_attention.0.o.weight",
                                       "expression_attention.1.o.weight"])


def _benchmark_args(**values) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    dit_benchmark.add_arguments(parser)
    return parser.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in values.items()])


def test_benchmark_variants_are_the_configs_they_name():
    args = _benchmark_args(dim=96, heads=1, layers=4, variants="all", landmark_points=7)
    assert args.variants == list(dit_benchmark.VARIANTS)
    assert _benchmark_args(variants="dex,both").variants == ["dex", "both"]
    with pytest.raises(SystemExit):
        _benchmark_args(variants="dex,film")
    base = dit_benchmark.variant_config(args, "factorportrait")
    assert base == DiTConfig(dim=96, ffn_dim=384, num_heads=1, num_layers=4, text_dim=256,
                             context_length=64, expression_width=128, expression_heads=4,
                             landmark_points=7)
    configs = {name: dit_benchmark.variant_config(args, name) for name in args.variants}
    assert configs["reference_warp"].reference_warp_blocks == (0, 2)  # half the blocks
    assert configs["dex"] == DiTConfig(**{**base.to_dict(), "head_pose_rays": True,
                                          "reference_warp_blocks": (0, 2),
                                          "expression_injection": "cross_attention"})

    def parameters(config: DiTConfig) -> int:
        return sum(p.numel() for p in FactorPortraitDiT(config).parameters())

    dim, patch = base.dim, 1 * 2 * 2
    assert parameters(configs["head_pose_rays"]) - parameters(base) == dim * 24 * patch
    assert parameters(configs["reference_warp"]) - parameters(base) == 2 * (dim * dim + dim)
