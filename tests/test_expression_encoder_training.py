"""Expression sets, training and evaluation of the expression encoder (issue 8)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest
import torch

from factorportrait.expression.augment import AugmentConfig
from factorportrait.expression.batches import SetPool
from factorportrait.expression.evaluate import METRICS, evaluate_sources, synthetic_evaluation
from factorportrait.expression.probes import (
    RidgeProbe,
    classification_accuracy,
    r2_scores,
    retrieval_accuracy,
)
from factorportrait.expression.projection import (
    ProjectionConfig,
    discriminant_projection,
    project_encoder,
)
from factorportrait.expression.sets import AvatarPool, SetSampling, identity_seeds, render_sets
from factorportrait.expression.train import (
    TrainConfig,
    config_from_recipe,
    train_expression_encoder,
)
from factorportrait.models.expression_encoder import ExpressionEncoder, ExpressionEncoderConfig

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def avatars() -> AvatarPool:
    return AvatarPool(identity_seeds(3, "train"))


def test_identity_seeds_are_deterministic_and_disjoint():
    train, heldout = identity_seeds(50, "train"), identity_seeds(50, "heldout")
    assert train == identity_seeds(50, "train") and not set(train) & set(heldout)
    assert identity_seeds(2, "train", seed=1) != train[:2]
    with pytest.raises(ValueError, match="'train' or 'heldout'"):
        identity_seeds(2, "test")


def test_sets_share_the_expression_and_vary_everything_else(avatars):
    sampling = SetSampling()
    sets = render_sets(avatars, 4, 3, 24, sampling, torch.Generator().manual_seed(0))
    assert sets.images.shape == (4, 3, 3, 30, 30) and sets.expression.shape == (4, 8)
    assert sets.images.min() >= -1 and sets.images.max() <= 1
    assert ((sets.expression == 0) | (sets.expression >= 0.15)).all()
    for name, values in sets.factors.items():
        assert values.shape == (4, 3) and (values.std(1) > 0.1).all(), name
    assert (sets.images[:, 0] - sets.images[:, 1]).abs().amax(dim=(1, 2, 3)).min() > 0.1
    again = render_sets(avatars, 4, 3, 24, sampling, torch.Generator().manual_seed(0))
    assert torch.equal(again.images, sets.images)


def test_pair_batches_keep_the_label_and_change_pose_and_crop(avatars):
    generator = torch.Generator().manual_seed(1)
    pool = SetPool(avatars, 6, 3, 24, SetSampling(), generator)
    before = pool.sets.expression.clone()
    batch = pool.sample(4, AugmentConfig(), 24)
    assert batch.crops.shape == (8, 3, 24, 24) and batch.expression.shape == (4, 8)
    assert torch.equal(batch.expression, before[batch.sets])  # the label is the set's
    views_a, views_b = batch.crops.chunk(2)
    assert (views_a - views_b).abs().amax(dim=(1, 2, 3)).min() > 0.1
    # the same views, augmented twice, differ only by the augmentation
    plain = pool.sample(4, AugmentConfig(0, 0, 0, 0, 0, 0), 24)
    assert not torch.equal(plain.crops, pool.sample(4, AugmentConfig(), 24).crops)
    pool.refresh(2)
    assert not torch.equal(pool.sets.expression[:2], before[:2])
    assert torch.equal(pool.sets.expression[2:], before[2:])


@pytest.mark.slow
def test_per_dimension_invariance_is_the_between_view_share_of_variance():
    from factorportrait.expression.losses import invariance_share

    torch.manual_seed(0)
    a = torch.randn(4096, 3)
    assert invariance_share(a, a).item() == 0.0
    b = torch.randn(4096, 3)  # unrelated views: half the pooled variance is between views
    assert invariance_share(a, b).item() == pytest.approx(1.0, abs=0.05)
    noisy = a + 0.5 * torch.randn(4096, 3)  # within variance 0.25 / 2 over total 1.125
    assert invariance_share(a, noisy).item() == pytest.approx(0.125 / 1.125, abs=0.01)
    assert invariance_share(10 * a, 10 * noisy).item() == pytest.approx(
        invariance_share(a, noisy).item(), rel=1e-3)  # scale-free: shrinking cannot meet it
    constant = torch.zeros(8, 3)
    assert invariance_share(constant, constant).item() == 0.0


def test_loss_falls_on_a_tiny_run():
    config = TrainConfig(preset="tiny", crop_size=32, steps=40, batch_sets=16, lr=3e-3,
                         warmup_steps=5, identities=4, pool_sets=24, pool_views=3,
                         refresh_sets=0, output_dir=None, augment=AugmentConfig(5, 0.03, 0.02),
                         projection=ProjectionConfig(dim=0))
    result = train_expression_encoder(config, log=None)
    assert result.steps == 40 and not result.encoder.training
    losses = [entry["loss"] for entry in result.history]
    regression = [entry["regression"] for entry in result.history]
    assert statistics.mean(losses[-8:]) < 0.9 * statistics.mean(losses[:8])
    assert statistics.mean(regression[-8:]) < statistics.mean(regression[:8])


def test_training_writes_a_loadable_encoder_and_a_log(tmp_path):
    config = TrainConfig(preset="tiny", crop_size=32, steps=3, batch_sets=4, identities=2,
                         pool_sets=4, pool_views=2, refresh_sets=1, save_every=2,
                         output_dir=str(tmp_path / "run"),
                         projection=ProjectionConfig(dim=3, sets=12, views=2))
    lines: list[str] = []
    result = train_expression_encoder(config, log=lines.append)
    loaded = ExpressionEncoder.from_pretrained(tmp_path / "run")
    crops = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded(crops), result.encoder(crops))
    assert (tmp_path / "run" / "training.json").is_file() and "trained 3 steps" in lines[-1]
    assert "onto 3 expression-discriminant directions" in lines[-2]
    assert loaded.config.code_rank == 3 and loaded(crops).shape == (2, 128)
    assert torch.all(loaded(crops)[:, 3:] == 0)


def _grouped_codes(groups: int = 400, views: int = 4, seed: int = 0):
    """Codes (N, 5): dim 0 the group's expression, dim 1 an identity offset as large, dim 2
    the expression plus view noise, dims 3-4 noise; returns codes, group, expression."""
    generator = torch.Generator().manual_seed(seed)
    expression = torch.randn(groups, generator=generator).repeat_interleave(views)
    nuisance = torch.randn(groups * views, generator=generator)
    codes = torch.stack([expression, nuisance, expression + 0.3 * nuisance,
                         *torch.randn(2, groups * views, generator=generator)], 1)
    return codes, torch.arange(groups).repeat_interleave(views), expression


def test_discriminant_projection_keeps_the_expression_and_drops_the_rest():
    codes, group, expression = _grouped_codes()
    projection = discriminant_projection(codes, group, dim=1)
    kept = projection(codes)[:, 0]
    assert abs(torch.corrcoef(torch.stack([kept, expression]))[0, 1]) > 0.999
    assert abs(torch.corrcoef(torch.stack([kept, codes[:, 1]]))[0, 1]) < 0.05
    assert kept.var().item() == pytest.approx(1.0, abs=0.01)  # unit variance on the fit set
    assert kept.mean().abs().item() < 1e-5
    assert projection.ratios[0] > 100  # between / within of an (almost) noiseless expression
    with pytest.raises(ValueError, match="dim must be in 1..5"):
        discriminant_projection(codes, group, dim=6)
    with pytest.raises(ValueError, match="several groups"):
        discriminant_projection(codes, torch.arange(len(codes)), dim=1)


def test_projection_folds_into_the_encoder_and_refits_the_head(tmp_path):
    torch.manual_seed(0)
    encoder = ExpressionEncoder(ExpressionEncoderConfig.tiny()).eval()
    crops = torch.rand(40, 3, 32, 32) * 2 - 1
    group = torch.arange(20).repeat_interleave(2)
    expression = torch.rand(40, 8)
    projected, projection = project_encoder(encoder, crops, group, expression, dim=4)
    with torch.no_grad():
        expected = projection(encoder(crops))
        codes = projected(crops)
    assert projected.config.code_rank == 4 and encoder.config.code_rank is None
    assert torch.allclose(codes[:, :4], expected, atol=1e-5)
    assert torch.all(codes[:, 4:] == 0)
    design = torch.cat([expected.double(), torch.ones(40, 1, dtype=torch.float64)], 1)
    least_squares = design @ torch.linalg.lstsq(design, expression.double()).solution
    with torch.no_grad():
        assert torch.allclose(projected.predict_parameters(codes).double(), least_squares,
                              atol=1e-4)
    projected.save_pretrained(tmp_path)
    loaded = ExpressionEncoder.from_pretrained(tmp_path)
    assert loaded.config.code_rank == 4 and torch.equal(loaded(crops), codes)
    with pytest.raises(ValueError, match="code_rank must be None or in 1..128"):
        ExpressionEncoderConfig.tiny().__class__(code_rank=0)
    with pytest.raises(ValueError, match="projection.dim must be >= 0"):
        ProjectionConfig(dim=-1)


def test_recipe_loads_with_overrides_and_rejects_unknown_keys():
    recipe = REPO / "recipes" / "expression_encoder.yaml"
    config = config_from_recipe(recipe, ["steps=7", "loss.invariance=2.5", "preset=tiny",
                                         "crop_size=32"])
    assert (config.steps, config.loss.invariance, config.preset) == (7, 2.5, "tiny")
    assert config.encoder_config() == ExpressionEncoderConfig.tiny()
    assert config_from_recipe(recipe).to_dict()["sampling"]["camera_distance_m"] == (0.3, 1.1)
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\]"):
        config_from_recipe(recipe, ["bogus=1"])
    with pytest.raises(ValueError, match=r"unknown keys \['augment.spin'\]"):
        config_from_recipe(recipe, ["augment.spin=1"])
    with pytest.raises(ValueError, match="batch_sets"):
        TrainConfig(batch_sets=10, pool_sets=5)


def test_probes_on_known_features():
    generator = torch.Generator().manual_seed(0)
    for dim, floor in ((6, 0.99), (300, 0.3)):  # primal (D <= N) and dual (D > N) solutions
        x = torch.randn(200, dim, generator=generator)
        y = x[:, :3] @ torch.randn(3, 2, generator=generator) + 1
        probe = RidgeProbe(x[:150], y[:150])
        assert r2_scores(probe.predict(x[150:]), y[150:]).min() > floor
    labels = torch.randint(4, (120,), generator=generator)
    x = 3 * torch.randn(4, 4, generator=generator)[labels] + torch.randn(120, 4, generator=generator)
    assert classification_accuracy(x[:80], labels[:80], x[80:], labels[80:]) > 0.8
    group = torch.arange(6).repeat_interleave(4)  # 6 expressions x 4 identities
    identity = torch.arange(4).repeat(6)
    features = torch.nn.functional.one_hot(group, 6).float() + 0.01 * torch.randn(24, 6)
    accuracy, chance = retrieval_accuracy(features, group, identity, torch.arange(24))
    assert accuracy == 1.0 and abs(chance - 3 / 18) < 1e-6
    accuracy, _ = retrieval_accuracy(torch.nn.functional.one_hot(identity, 4).float(), group,
                                     identity, torch.arange(24))
    assert accuracy < 0.5  # codes that only know the identity cannot retrieve across it


def test_evaluation_returns_all_metrics_in_range():
    probe, test = synthetic_evaluation(32, num_sets=8, views=3, train_identities=4,
                                       heldout_identities=3)
    assert len(probe) == len(test) == 24
    torch.manual_seed(0)
    encoder = ExpressionEncoder(ExpressionEncoderConfig.tiny()).eval()
    results = evaluate_sources({"tiny": encoder}, probe, test)
    assert list(results) == ["tiny", "raw pixels"]
    for metrics in results.values():
        assert set(METRICS) <= set(metrics)
        assert metrics["expression_rmse"] >= 0 and metrics["expression_r2"] <= 1
        assert 0 <= metrics["identity_accuracy"] <= 1 and 0 < metrics["identity_chance"] <= 1
        assert metrics["pose_r2"] <= 1 and 0 <= metrics["retrieval"] <= 1
        assert 0 < metrics["retrieval_chance"] < 1
    again, _ = synthetic_evaluation(32, num_sets=8, views=3, train_identities=4,
                                    heldout_identities=3)
    assert torch.equal(again.crops, probe.crops)  # deterministic
    wide, _ = synthetic_evaluation(32, num_sets=8, views=3, train_identities=4,
                                   heldout_identities=3, crop_scale=1.3)
    assert torch.equal(wide.expression, probe.expression)  # the same draws, framed wider
    assert torch.equal(wide.identity, probe.identity)

    def background(crops):  # the renders' white background, in [-1, 1]
        return float((crops > 0.95).all(dim=1).float().mean())

    assert background(wide.crops) > background(probe.crops) + 0.05
    with pytest.raises(ValueError, match="crop_scale must be >= 1"):
        synthetic_evaluation(32, num_sets=2, views=1, train_identities=1,
                             heldout_identities=1, crop_scale=0.5)


def test_evaluation_tool_prints_the_table(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    sys.modules.pop("evaluate_expression", None)
    import evaluate_expression

    assert evaluate_expression.main(["--random-init", "tiny", "--sets", "6", "--views", "3",
                                     "--train-identities", "3", "--heldout-identities", "3"]) == 0
    out = capsys.readouterr().out
    for key in ("expression_rmse", "identity_accuracy", "pose_r2", "retrieval",
                "untrained tiny", "raw pixels"):
        assert key in out


@pytest.mark.slow
def test_evaluation_and_face_boxes_from_a_dataset_folder(tmp_path):
    from factorportrait.data import load_annotations, read_manifest
    from factorportrait.data.synthetic import SyntheticConfig, generate_dataset
    from factorportrait.expression.crop import face_boxes, face_points_from_pose
    from factorportrait.expression.dataset_eval import annotation_face_boxes, dataset_set
    from factorportrait.expression.evaluate import evaluate_features, extract, pixel_features
    from factorportrait.geometry import Cameras

    root = tmp_path / "data"
    generate_dataset(root, SyntheticConfig(identities=2, heldout=1, frames=5, width=64,
                                           height=64, kinds=("studio", "viewsweep"),
                                           studio_views=3, supersample=1, seed=2))
    record = next(r for r in read_manifest(root) if r.kind == "studio")
    annotations = load_annotations(record.resolve(root, "annotations"))
    exact = annotation_face_boxes(annotations, [0, 4])
    cameras = Cameras(annotations.K[[0, 4]], annotations.c2w[[0, 4]])
    generic = face_boxes(cameras, face_points_from_pose(annotations.head_rotation[[0, 4]],
                                                        annotations.head_translation[[0, 4]]))
    # the generic rigid face lands near the avatar's own face points
    assert (exact.center - generic.center).norm(dim=1).max() < 0.15 * exact.side.min()
    probe = dataset_set(root, "train", 32, frames_per_clip=3)
    test = dataset_set(root, "heldout", 32, frames_per_clip=3)
    assert len(test) == 4 * 3 and not test.across_identities  # 3 studio views + 1 sweep
    assert len(torch.unique(test.group)) < len(test)  # studio views share expressions
    metrics = evaluate_features(extract(pixel_features, probe.crops), probe,
                                extract(pixel_features, test.crops), test)
    assert 0 <= metrics["retrieval"] <= 1 and metrics["expression_rmse"] >= 0
