"""DeX-Portrait conditioning in the DiT: head-pose ray maps, reference warping, cross-attention
expression and the landmark condition (C3): Wan equivalence at zero init, live gradients,
warping on values, packing, guidance nulls."""

import math

import pytest
import torch

from factorportrait import DiTConfig, FactorPortraitDiT
from factorportrait.diffusion.flow_matching import null_conditions
from factorportrait.geometry.head_pose import (dit_head_rays, latent_frame_poses,
                                               relative_pose)
from factorportrait.geometry.rays import head_pose_ray_map, matrix_from_rts
from factorportrait.geometry.rotations import axis_angle_to_matrix
from factorportrait.models import backbone
from factorportrait.models.dex import warp_features
from tests.conftest import make_conditions

VARIANTS = {
    "head_pose_rays": dict(head_pose_rays=True),
    "reference_warp": dict(reference_warp_blocks=(0, 1)),
    "dual_branch": dict(head_pose_rays=True, reference_warp_blocks=(1,)),
    "cross_attention": dict(expression_injection="cross_attention"),
    "both": dict(expression_injection="both"),
    "landmarks": dict(expression_condition="landmarks", expression_injection="cross_attention",
                      landmark_points=7),
    "dex": dict(head_pose_rays=True, reference_warp_blocks=(0,),
                expression_injection="cross_attention"),
}


def random_poses(batch: int, count: int, seed: int = 0) -> torch.Tensor:
    """``(B, count, 3, 4)`` plausible RTS poses."""
    g = torch.Generator().manual_seed(seed)
    rotation = axis_angle_to_matrix(torch.randn(batch * count, 3, generator=g) * 0.3)
    translation = torch.randn(batch * count, 3, generator=g) * 0.1
    translation[:, 2] = 0
    scale = 0.5 + 0.1 * torch.rand(batch * count, generator=g)
    return matrix_from_rts(rotation, translation, scale).view(batch, count, 3, 4)


def dex_conditions(config: DiTConfig, batch: int = 2, frames: int = 3, seed: int = 0):
    noisy, conditions = make_conditions(config, batch=batch, frames=frames, seed=seed)
    video = 4 * (frames - 1) + 1
    g = torch.Generator().manual_seed(seed + 1)
    conditions.head_pose = random_poses(batch, 1 + video, seed)
    conditions.landmarks = torch.rand(batch, video, config.landmark_points, 2, generator=g) * 2 - 1
    return noisy, conditions


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_zero_init_variant_equals_plain_wan(wan_checkpoint, variant):
    path, wan = wan_checkpoint
    config = DiTConfig.tiny(**VARIANTS[variant])
    model = FactorPortraitDiT.from_wan(path, config).eval()
    noisy, conditions = dex_conditions(config)
    timestep = torch.tensor([37.0, 811.0])
    with torch.no_grad():
        ours = model(noisy, timestep, conditions)
        plain = backbone.wan_reference_forward(
            wan, torch.cat([conditions.reference_latent, noisy], dim=2), timestep,
            conditions.context)
    assert (ours - plain[:, :, 1:]).abs().max().item() <= 1e-5


def new_parameters(model: FactorPortraitDiT) -> dict[str, torch.nn.Parameter]:
    prefixes = ("expression_tokens.", "landmark_encoder.", "expression_attention.",
                "reference_warp.", "expression_controller.")
    return {name: p for name, p in model.named_parameters() if name.startswith(prefixes)}


@pytest.mark.parametrize("variant", ["dex", "landmarks", "both", "reference_warp"])
def test_gradients_reach_every_new_parameter_after_one_step(variant):
    torch.manual_seed(0)
    config = DiTConfig.tiny(**VARIANTS[variant])
    model = FactorPortraitDiT(config)
    noisy, conditions = dex_conditions(config)
    timestep = torch.tensor([300.0, 700.0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):  # step 1 moves the zero outputs off zero; step 2 reaches everything
        optimizer.zero_grad()
        model(noisy, timestep, conditions).square().mean().backward()
        grads = {name: p.grad for name, p in new_parameters(model).items()}
        optimizer.step()
    assert grads, "no new parameters found"
    dead = [name for name, grad in grads.items() if grad is None or grad.abs().max() == 0]
    assert not dead, f"no gradient reaches {dead}"
    if config.head_pose_rays:
        extra = model.patch_embedding.weight.grad[:, 56:]
        assert extra.abs().max() > 0  # the head-ray channels learn
    assert set(model.condition_parameters()) >= set(new_parameters(model).values())


def test_warp_identity_returns_features_unchanged():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 8, 5, 6, generator=g)
    identity = torch.eye(3, 4).expand(3, -1, -1)
    assert torch.allclose(warp_features(features, identity, depth=4), features, atol=1e-6)


@pytest.mark.parametrize("shift", [1, 2])
def test_warp_translation_shifts_by_token_pixels(shift):
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, 8, 4, 6, generator=g)  # (N, C, H, W)
    width, height = features.shape[-1], features.shape[-2]
    along_u = torch.eye(3, 4).repeat(2, 1, 1)
    along_u[:, 0, 3] = 2 * shift / width
    out = warp_features(features, along_u, depth=2)
    assert torch.allclose(out[..., shift:], features[..., :-shift], atol=1e-5)
    assert out[..., :shift].abs().max() <= 1e-6  # entered from outside the volume: zeros
    along_v = torch.eye(3, 4).repeat(2, 1, 1)
    along_v[:, 1, 3] = -2 * shift / height
    out = warp_features(features, along_v, depth=2)
    assert torch.allclose(out[..., :-shift, :], features[..., shift:, :], atol=1e-5)


def test_warp_quarter_turn_in_plane_is_a_rotation_of_the_map():
    g = torch.Generator().manual_seed(2)
    features = torch.randn(1, 4, 5, 5, generator=g)
    turn = torch.zeros(1, 3, 4)
    turn[0, :3, :3] = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, math.pi / 2]]))[0]
    out = warp_features(features, turn, depth=1)
    # x -> R x with R (u, v) = (-v, u): the feature at (u, v) moves to (-v, u)
    expected = torch.rot90(features, k=-1, dims=(-2, -1))  # clockwise on screen (v is down)
    assert torch.allclose(out, expected, atol=1e-5)


def test_identity_pose_warp_adds_projected_reference_to_every_frame():
    torch.manual_seed(0)
    config = DiTConfig.tiny(reference_warp_blocks=(0,))
    model = FactorPortraitDiT(config)
    with torch.no_grad():
        projection = model.reference_warp.projections["0"]
        projection.weight.copy_(torch.eye(config.dim) * 2)
        projection.bias.fill_(0.25)
    batch, frames, grid = 2, 3, (2, 3)
    x = torch.randn(batch, 1 + frames, grid[0] * grid[1], config.dim)
    still = random_poses(batch, 1)[:, :1].expand(-1, 1 + 4 * (frames - 1) + 1, -1, -1)
    transforms = model.reference_warp.frame_transforms(still)
    assert torch.allclose(transforms, torch.eye(3, 4).expand_as(transforms), atol=1e-5)
    with torch.no_grad():
        out = model.add_warped_reference(x, 0, grid, transforms)
    assert torch.equal(out[:, 0], x[:, 0])
    expected = x[:, 1:] + 2 * x[:, :1] + 0.25
    assert torch.allclose(out[:, 1:], expected, atol=1e-5)


def test_relative_pose_maps_source_to_driving():
    source, driving = random_poses(1, 2, seed=3)[0].split(1)
    relative = relative_pose(source, driving)
    point = torch.tensor([0.2, -0.1, 0.3, 1.0])
    through_source = torch.cat([source[0] @ point, torch.ones(1)])
    assert torch.allclose(relative[0] @ through_source, driving[0] @ point, atol=1e-5)


def test_head_rays_pack_source_and_driving_per_video_frame():
    poses = random_poses(2, 1 + 9, seed=4)  # source + 9 video frames -> F_lat = 3
    rays = dit_head_rays(poses, 32, 48)
    assert rays.shape == (2, 24, 4, 4, 6)
    maps = head_pose_ray_map(poses.reshape(-1, 3, 4), 4, 6).view(2, 10, 3, 4, 6)
    source, video = maps[:, 0], maps[:, 1:]
    for k in range(4):
        assert torch.allclose(rays[:, 6 * k:6 * k + 3, 0], source)  # frame 0: the source ...
        assert torch.allclose(rays[:, 6 * k + 3:6 * k + 6, 0], source)  # ... in both halves
        assert torch.allclose(rays[:, 6 * k + 3:6 * k + 6, 1], video[:, 0])
        for j in (1, 2):
            assert torch.allclose(rays[:, 6 * k:6 * k + 3, 1 + j], source)
            assert torch.allclose(rays[:, 6 * k + 3:6 * k + 6, 1 + j], video[:, 4 * j - 3 + k])
    identity = torch.eye(3, 4).expand(1, 6, -1, -1)
    assert dit_head_rays(identity, 16, 16).abs().max() == 0


def test_latent_frame_poses_take_the_last_frame_of_each_chunk():
    poses = random_poses(1, 1 + 9, seed=5)
    picked = latent_frame_poses(poses)
    assert torch.equal(picked[:, 0], poses[:, 0])
    assert torch.equal(picked[:, 1], poses[:, 1])  # video frame 0
    assert torch.equal(picked[:, 2], poses[:, 5])  # video frame 4
    assert torch.equal(picked[:, 3], poses[:, 9])  # video frame 8


def test_guidance_nulls_drop_landmarks_and_head_motion():
    config = DiTConfig.tiny(landmark_points=7)
    _, conditions = dex_conditions(config)
    no_expression = null_conditions(conditions, {"expression"})
    assert no_expression.landmarks.abs().max() == 0
    assert torch.equal(no_expression.head_pose, conditions.head_pose)
    no_pose = null_conditions(conditions, {"pose"}, mask=torch.tensor([True, False]))
    assert torch.equal(no_pose.head_pose[0], conditions.head_pose[0, :1].expand(10, -1, -1))
    assert torch.equal(no_pose.head_pose[1], conditions.head_pose[1])
    assert torch.equal(no_pose.landmarks, conditions.landmarks)


def test_bad_dex_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="reference_warp_blocks"):
        DiTConfig.tiny(reference_warp_blocks=(5,))
    with pytest.raises(ValueError, match="reference_warp_depth"):
        DiTConfig.tiny(reference_warp_depth=7)
    with pytest.raises(ValueError, match="expression_injection"):
        DiTConfig.tiny(expression_injection="film")
    with pytest.raises(ValueError, match="cross attention only"):
        DiTConfig.tiny(expression_condition="landmarks")
    config = DiTConfig.tiny(**VARIANTS["landmarks"])
    model = FactorPortraitDiT(config)
    noisy, conditions = dex_conditions(config)
    conditions.landmarks = conditions.landmarks[:, :, :5]
    with pytest.raises(ValueError, match="landmarks"):
        model(noisy, torch.tensor([1.0, 2.0]), conditions)
    conditions.landmarks = None
    conditions.head_pose = conditions.head_pose[:, :4]
    with pytest.raises(ValueError, match="head_pose"):
        model(noisy, torch.tensor([1.0, 2.0]), conditions)


def test_variant_checkpoints_round_trip(tmp_path):
    torch.manual_seed(0)
    config = DiTConfig.tiny(**VARIANTS["dex"])
    model = FactorPortraitDiT(config).eval()
    for parameter in new_parameters(model).values():
        parameter.data.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = FactorPortraitDiT.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == config
    noisy, conditions = dex_conditions(config)
    timestep = torch.tensor([100.0, 900.0])
    with torch.no_grad():
        assert torch.equal(model(noisy, timestep, conditions),
                           loaded(noisy, timestep, conditions))


def test_long_video_windows_slice_head_poses_and_landmarks():
    from factorportrait.inference.long_video import LatentWindow, window_conditions

    config = DiTConfig.tiny(landmark_points=7)
    _, conditions = dex_conditions(config, frames=5)  # 17 video frames
    window = window_conditions(conditions, LatentWindow(2, 5, torch.ones(3)))
    first, last = 8, 16  # the window's video frames (its first latent frame: video frame 8)
    assert torch.equal(window.head_pose[:, 0], conditions.head_pose[:, 0])  # the source stays
    assert torch.equal(window.head_pose[:, 1:], conditions.head_pose[:, 1 + first:2 + last])
    assert torch.equal(window.landmarks, conditions.landmarks[:, first:last + 1])
    window.validate(torch.zeros(2, 16, 3, 8, 8), expression_dim=config.expression_dim,
                    landmark_points=7)
