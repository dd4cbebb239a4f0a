"""DeX-Portrait's motion trainer networks (§3.2): the volume warp on values (identity, a 90°
turn, a shift, a scale), RTS poses that are scaled rotations, AdaIN statistics, the trainer's
identity-pose equivalence and live gradients everywhere."""

import math

import pytest
import torch
import torch.nn.functional as F

from factorportrait.geometry.rotations import axis_angle_to_matrix, rotation_y
from factorportrait.models.expression_encoder import ExpressionEncoderConfig
from factorportrait.motion import (AdaIN, MotionTrainer, MotionTrainerConfig, PatchDiscriminator,
                                   PoseEncoder, generator_adversarial_loss, reconstruction_loss,
                                   rotation_6d_to_matrix, rts_pose, warp_volume)
from factorportrait.motion.geometry import pose_scale_and_rotation

IDENTITY = torch.eye(3, 4)[None]


def poses(rotation: torch.Tensor, translation=(0.0, 0.0), scale: float = 1.0) -> torch.Tensor:
    """``(1, 3, 4)`` RTS pose of one ``(3, 3)`` rotation."""
    return rts_pose(rotation[None], torch.tensor([translation]), torch.tensor([math.log(scale)]))


def test_identity_warp_returns_the_volume():
    g = torch.Generator().manual_seed(0)
    volume = torch.randn(2, 3, 5, 6, 7, generator=g)
    same = IDENTITY.expand(2, 3, 4)
    assert (warp_volume(volume, same, same) - volume).abs().max() < 1e-6
    # Equal non-trivial poses: P_d P_s⁻¹ = I up to rounding.
    pose = rts_pose(axis_angle_to_matrix(torch.randn(2, 3, generator=g) * 0.5),
                    torch.randn(2, 2, generator=g) * 0.1, torch.randn(2, generator=g) * 0.2)
    assert (warp_volume(volume, pose, pose) - volume).abs().max() < 1e-5


def test_quarter_turn_about_the_vertical_axis_moves_a_voxel_analytically():
    n = 5
    volume = torch.zeros(1, 1, n, n, n)  # (B, C, D, H, W): z, v, u
    volume[0, 0, 0, 2, n - 1] = 1.0  # u = +0.8 (right), z = −0.8 (front)
    turn = poses(rotation_y(torch.tensor(math.pi / 2)))
    warped = warp_volume(volume, IDENTITY, turn)
    # R_y(90°): u' = z = −0.8, z' = −u = −0.8: the front-left voxel.
    expected = torch.zeros_like(volume)
    expected[0, 0, 0, 2, 0] = 1.0
    assert (warped - expected).abs().max() < 1e-5


def test_quarter_turn_permutes_a_random_volume():
    n = 6
    volume = torch.randn(2, 3, n, 4, n, generator=torch.Generator().manual_seed(1))
    turn = poses(rotation_y(torch.tensor(math.pi / 2))).expand(2, 3, 4)
    warped = warp_volume(volume, IDENTITY.expand(2, 3, 4), turn)
    # out[z=k, u=j] = in[z=j, u=n−1−k]: voxel centres map onto voxel centres.
    expected = volume.permute(0, 1, 4, 3, 2).flip(2)
    assert (warped - expected).abs().max() < 1e-5


def test_translation_shifts_by_whole_voxels_and_scale_stretches_a_ramp():
    width = 8
    volume = torch.randn(1, 2, 3, 4, width, generator=torch.Generator().manual_seed(2))
    shifted = warp_volume(volume, IDENTITY, poses(torch.eye(3), translation=(2 * 2 / width, 0)))
    assert (shifted[..., 2:] - volume[..., :-2]).abs().max() < 1e-5  # 2 voxels to the right
    assert shifted[..., :2].abs().max() == 0  # from outside the volume: zeros
    # A linear ramp f = u; scaling by 2 about the centre gives f(x / 2) = u / 2.
    u = (2 * torch.arange(width) + 1) / width - 1
    ramp = u.expand(1, 1, width, width, width).contiguous()
    doubled = warp_volume(ramp, IDENTITY, poses(torch.eye(3), scale=2.0))
    assert (doubled - ramp / 2).abs().max() < 1e-5


def test_warp_relative_pose_only():
    """``P_d P_s⁻¹`` only matters: moving both poses by the same similarity changes nothing."""
    g = torch.Generator().manual_seed(3)
    volume = torch.randn(1, 2, 6, 6, 6, generator=g)
    turn = poses(rotation_y(torch.tensor(math.pi / 2)))
    common = poses(axis_angle_to_matrix(torch.tensor([0.2, -0.4, 0.1])), (0.1, -0.2), 0.7)
    homogeneous = torch.cat([common, torch.tensor([[[0.0, 0, 0, 1]]])], 1)
    moved = [p @ homogeneous for p in (IDENTITY, turn)]
    reference = warp_volume(volume, IDENTITY, turn)
    assert (warp_volume(volume, *moved) - reference).abs().max() < 1e-4


def test_rotation_6d_gives_proper_rotations():
    d6 = torch.randn(64, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    R = rotation_6d_to_matrix(d6)
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3, dtype=R.dtype).expand(64, 3, 3),
                          atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(64, dtype=R.dtype), atol=1e-12)
    identity = rotation_6d_to_matrix(torch.tensor([1.0, 0, 0, 0, 1, 0]))
    assert torch.equal(identity, torch.eye(3))


def test_pose_encoder_predicts_scaled_rotations_in_head_pose_convention():
    config = MotionTrainerConfig.tiny()
    encoder = PoseEncoder(config)
    with torch.no_grad():  # far from its near-identity init: large, varied rotations
        encoder.head.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(5))
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(6)) * 2 - 1
    P = encoder(images)
    assert P.shape == (4, 3, 4)
    scale, R = pose_scale_and_rotation(P.double())
    eye = torch.eye(3, dtype=R.dtype).expand(4, 3, 3)
    assert torch.allclose(R.transpose(1, 2) @ R, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(4, dtype=R.dtype), atol=1e-5)
    assert (scale > 0).all() and (P[:, 2, 3] == 0).all()  # t = [t_u, t_v, 0]
    assert (R - eye).abs().amax() > 0.1  # the check is not vacuous
    rotation, translation, log_scale = encoder.rts(images)
    assert torch.allclose(P, rts_pose(rotation, translation, log_scale))
    assert torch.allclose(scale.float(), log_scale.exp(), rtol=1e-5)


def test_fresh_pose_encoder_starts_near_the_identity_pose():
    encoder = PoseEncoder(MotionTrainerConfig.tiny())
    P = encoder(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert (P - IDENTITY).abs().max() < 0.3


def test_adain_sets_channel_statistics_to_the_code_affine():
    g = torch.Generator().manual_seed(7)
    adain = AdaIN(channels=5, code_dim=6)
    x = torch.randn(3, 5, 8, 8, generator=g) * 3 + 2  # no channel has zero variance
    code = torch.randn(3, 6, generator=g)
    out = adain(x, code)
    scale, bias = adain.style(code)
    assert torch.allclose(out.mean(dim=(2, 3)), bias, atol=1e-5)
    assert torch.allclose(out.std(dim=(2, 3), unbiased=False), scale.abs(), atol=1e-4)
    # style is the affine of the code
    weight, offset = adain.affine.weight, adain.affine.bias
    assert torch.allclose(torch.cat([scale, bias], 1), code @ weight.T + offset, atol=1e-6)


@pytest.fixture
def tiny_batch():
    g = torch.Generator().manual_seed(8)
    config = MotionTrainerConfig.tiny()
    crop = config.expression.crop_size

    def images(size):
        return torch.rand(2, 3, size, size, generator=g) * 2 - 1

    return config, images(64), images(64), images(crop), images(64)


def test_trainer_outputs_and_identity_pose_equivalence(tiny_batch):
    config, source, driving, expression, _ = tiny_batch
    torch.manual_seed(0)
    model = MotionTrainer(config).eval()
    with torch.no_grad():
        out = model(source, driving, expression)
        assert out["image"].shape == (2, 3, 64, 64)
        assert out["image"].abs().max() <= 1
        assert out["code"].shape == (2, config.code_dim)
        assert out["pose_source"].shape == out["pose_driving"].shape == (2, 3, 4)
        # Same pose input for source and driving: the warp is the identity, so the image is
        # the decoder applied to the unwarped volume.
        same = model(source, driving, expression, source_pose_input=driving)
        unwarped = model.decoder(model.appearance(source), same["code"])
    assert torch.allclose(same["pose_source"], same["pose_driving"])
    assert (same["image"] - unwarped).abs().max() < 1e-5


def test_every_parameter_gets_a_gradient(tiny_batch):
    config, source, driving, expression, target = tiny_batch
    torch.manual_seed(0)
    model, discriminator = MotionTrainer(config), PatchDiscriminator(config)
    with torch.no_grad():  # wake zero-initialised gates (residual norms) so every path is live
        for p in [*model.parameters(), *discriminator.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    image = model(source, driving, expression)["image"]
    loss = reconstruction_loss(image, target) + generator_adversarial_loss(discriminator(image))
    loss.backward()
    for owner, module in (("generator", model), ("discriminator", discriminator)):
        for name, p in module.named_parameters():
            assert p.grad is not None, f"{owner} {name}: no gradient"
            assert torch.isfinite(p.grad).all(), f"{owner} {name}: non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{owner} {name}: zero gradient"


def test_fresh_trainer_has_gradients_on_every_parameter(tiny_batch):
    """At initialisation too, every parameter is reached (zero-init gates get zero grads)."""
    config, source, driving, expression, target = tiny_batch
    model = MotionTrainer(config)
    reconstruction_loss(model(source, driving, expression)["image"], target).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.pose.head.weight.grad.abs().sum() > 0  # the pose learns through the warp


def test_discriminator_scales_judge_the_pooled_image():
    config = MotionTrainerConfig.tiny()
    discriminator = PatchDiscriminator(config)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    outputs = discriminator(images)
    assert len(outputs) == config.discriminator_scales
    assert [f.shape[1] for f in outputs[0]] == [*config.discriminator_widths, 1]
    assert outputs[0][-1].shape == (2, 1, 16, 16) and outputs[1][-1].shape == (2, 1, 8, 8)
    coarse = discriminator.scales[1](F.avg_pool2d(images, 2))
    assert torch.equal(coarse[-1], outputs[1][-1])


@pytest.mark.parametrize("overrides, message", [
    ({"decoder_widths": (8,)}, "upsampling block per appearance stage"),
    ({"image_size": 60}, "multiple of"),
    ({"pose_blocks": (1,)}, "equal lengths"),
    ({"volume_depth": 0}, "positive integer"),
    ({"expression": ExpressionEncoderConfig.tiny()}, "num_parameters must be 0"),
])
def test_config_refuses_inconsistent_sizes(overrides, message):
    tiny = MotionTrainerConfig.tiny()
    fields = {name: getattr(tiny, name) for name in tiny.__dataclass_fields__}
    with pytest.raises(ValueError, match=message):
        MotionTrainerConfig(**{**fields, **overrides})


def test_trainer_rejects_wrong_input_sizes(tiny_batch):
    config, source, driving, expression, _ = tiny_batch
    model = MotionTrainer(config)
    with pytest.raises(ValueError, match="pose_input must be"):
        model(source, driving[:, :, :32, :32], expression)
    with pytest.raises(ValueError, match=r"expression_input must be \(2, 3, 32, 32\)"):
        model(source, driving, source)
