"""Expression encoder model, face crops and augmentations (issue 8)."""

from __future__ import annotations

import math

import pytest
import torch

from factorportrait.expression.augment import AugmentConfig, augment_faces, colour_jitter
from factorportrait.expression.crop import (
    GENERIC_FACE_POINTS,
    FaceBoxes,
    boxes_from_xyxy,
    crop_faces,
    crop_intrinsics,
    face_boxes,
    face_points_from_pose,
)
from factorportrait.geometry import Cameras, look_at
from factorportrait.models.expression_encoder import ExpressionEncoder, ExpressionEncoderConfig


def test_encoder_maps_crops_to_128d_codes():
    torch.manual_seed(0)
    for config in (ExpressionEncoderConfig.tiny(), ExpressionEncoderConfig.small(48),
                   ExpressionEncoderConfig.tiny(crop_size=40)):
        encoder = ExpressionEncoder(config).eval()
        crops = torch.rand(3, 3, config.crop_size, config.crop_size) * 2 - 1
        codes = encoder(crops)
        assert codes.shape == (3, 128) and torch.isfinite(codes).all()
        assert encoder.predict_parameters(codes).shape == (3, 8)
    resnet = ExpressionEncoderConfig.resnet18()
    assert (resnet.crop_size, resnet.code_dim, resnet.stem_stride) == (224, 128, 4)


def test_encoder_rejects_wrong_inputs_and_configs():
    encoder = ExpressionEncoder(ExpressionEncoderConfig.tiny())
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\).*crop_faces"):
        encoder(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="unknown expression encoder preset 'huge'"):
        ExpressionEncoderConfig.preset("huge")
    with pytest.raises(ValueError, match="stem_stride"):
        ExpressionEncoderConfig(stem_stride=3)
    with pytest.raises(ValueError, match="equal length"):
        ExpressionEncoderConfig(widths=(8, 16), blocks=(1,))
    with pytest.raises(ValueError, match="total stride"):
        ExpressionEncoderConfig.tiny(crop_size=4)
    with pytest.raises(ValueError, match="no parameter head"):
        ExpressionEncoder(ExpressionEncoderConfig(**{**ExpressionEncoderConfig.tiny().to_dict(),
                                                     "num_parameters": 0})
                          ).predict_parameters(torch.zeros(1, 128))


def test_save_load_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    encoder = ExpressionEncoder(ExpressionEncoderConfig.tiny())
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    crops = torch.rand(4, 3, 32, 32) * 2 - 1
    encoder(crops).pow(2).mean().backward()  # move weights and BatchNorm statistics
    optimizer.step()
    encoder.eval().save_pretrained(tmp_path / "enc")
    loaded = ExpressionEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.config == encoder.config and not loaded.training
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert torch.equal(encoder(crops), loaded(crops))
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == [
        "expression_encoder.json", "expression_encoder.safetensors"]
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        ExpressionEncoder.from_pretrained(tmp_path / "missing")


def _dot_image(points: list[tuple[float, float]], size: int = 64) -> torch.Tensor:
    image = -torch.ones(1, 3, size, size)
    for x, y in points:
        image[0, :, int(y), int(x)] = 1.0  # pixel (x, y) covers [x, x+1) × [y, y+1)
    return image


def _brightest(crop: torch.Tensor) -> tuple[float, float]:
    """Intensity-weighted centre (x, y) of the bright pixels, in crop pixel coordinates."""
    weight = (crop[0, 0] + 1).clamp_min(0)
    ys, xs = torch.meshgrid(torch.arange(crop.shape[-2]) + 0.5,
                            torch.arange(crop.shape[-1]) + 0.5, indexing="ij")
    return float((weight * xs).sum() / weight.sum()), float((weight * ys).sum() / weight.sum())


def test_crop_faces_maps_the_box_onto_the_crop():
    image = _dot_image([(20, 30)])
    # the box [12, 28) x [22, 38): crop pixel (8, 8) is image pixel (20, 30), exactly
    boxes = FaceBoxes(torch.tensor([[20.0, 30.0]]), torch.tensor([16.0]), torch.zeros(1))
    crop = crop_faces(image, boxes, 16)
    assert crop[0, 0, 8, 8] == 1 and (crop[0, 0] > 0).sum() == 1
    crop = crop_faces(image, FaceBoxes(torch.tensor([[24.0, 34.0]]), torch.tensor([16.0]),
                                       torch.zeros(1)), 16)
    assert crop[0, 0, 4, 4] == 1
    xyxy = boxes_from_xyxy(torch.tensor([[10.0, 20.0, 30.0, 50.0]]))
    assert xyxy.center.tolist() == [[20.0, 35.0]] and xyxy.side.tolist() == [30.0]
    with pytest.raises(ValueError, match="x1 > x0"):
        boxes_from_xyxy(torch.tensor([[10.0, 20.0, 5.0, 50.0]]))


def test_roll_normalised_crop_levels_the_eye_line():
    angle = math.radians(25)
    center, half = torch.tensor([32.0, 32.0]), 10.0
    right = center - half * torch.tensor([math.cos(angle), math.sin(angle)])
    left = center + half * torch.tensor([math.cos(angle), math.sin(angle)])
    image = _dot_image([tuple(right.tolist()), tuple(left.tolist())])
    boxes = FaceBoxes(center[None] + 0.5, torch.tensor([32.0]), torch.tensor([angle]))
    crop = crop_faces(image, boxes, 64, roll_normalise=True)
    rows = (crop[0, 0] > 0).nonzero()[:, 0].float()
    assert rows.max() - rows.min() <= 2  # both dots on one row


def _frontal_camera(distance: float = 0.6, focal: float = 500.0) -> Cameras:
    K = torch.tensor([[[focal, 0, 128], [0, focal, 128], [0, 0, 1.0]]])
    return Cameras(K, look_at(torch.tensor([[0.0, 0.0, -distance]]), (0.0, 0.0, 0.0)), 256, 256)


def test_face_boxes_from_a_projected_head_pose():
    camera = _frontal_camera()
    points = face_points_from_pose(torch.zeros(1, 3), torch.zeros(1, 3))
    assert torch.allclose(points[0], GENERIC_FACE_POINTS)
    box = face_boxes(camera, points)
    anchor = ((points[0, 0] + points[0, 1]) / 2 + points[0, 3]) / 2
    depth = 0.6 + float(anchor[2])
    assert abs(float(box.roll[0])) < 1e-5
    assert abs(float(box.side[0]) - 500 * 0.15 / depth) < 1e-3
    assert torch.allclose(box.center[0], 128 + 500 * anchor[:2] / depth, atol=1e-3)
    # a head rolled about the viewing axis rolls the box by the same angle
    rolled = face_points_from_pose(torch.tensor([[0.0, 0.0, math.radians(10)]]),
                                   torch.zeros(1, 3))
    assert abs(math.degrees(float(face_boxes(camera, rolled).roll[0])) - 10) < 0.5


def test_crop_intrinsics_project_into_the_crop():
    camera = _frontal_camera()
    boxes = FaceBoxes(torch.tensor([[100.0, 140.0]]), torch.tensor([80.0]), torch.zeros(1))
    K = crop_intrinsics(camera.K, boxes, 32)
    point = torch.tensor([[0.03, 0.02, 0.0]])
    full, _ = camera.project(point)
    cropped, _ = Cameras(K, camera.c2w).project(point)
    expected = (full - torch.tensor([60.0, 100.0])) * 32 / 80
    assert torch.allclose(cropped, expected, atol=1e-4)


def test_augmentations_rotate_shift_and_recolour_about_the_face():
    generator = torch.Generator().manual_seed(0)
    image = _dot_image([(32, 32)]).repeat(8, 1, 1, 1)
    boxes = FaceBoxes(torch.full((8, 2), 32.5), torch.full((8,), 24.0), torch.zeros(8))
    plain, _ = augment_faces(image, boxes, 24, AugmentConfig(0, 0, 0, 0, 0, 0), generator)
    assert torch.equal(plain, crop_faces(image, boxes, 24))
    rotate = AugmentConfig(rotation_deg=30, scale_jitter=0, shift_jitter=0, brightness=0,
                           contrast=0, saturation=0)
    rotated, used = augment_faces(image, boxes, 24, rotate, generator)
    assert used.roll.abs().max() > math.radians(5) and used.roll.abs().max() <= math.radians(30)
    for crop in rotated:  # rotation is about the box centre: the dot stays there
        x, y = _brightest(crop[None])
        assert abs(x - 12) < 0.6 and abs(y - 12) < 0.6
    shifted, used = augment_faces(image, boxes, 24, AugmentConfig(0, 0.1, 0.1, 0, 0, 0),
                                  generator)
    assert not torch.equal(shifted, plain)
    assert (used.center - boxes.center).abs().max() <= 0.1 * 24 + 1e-5
    assert ((used.side / boxes.side) - 1).abs().max() <= 0.1 + 1e-6
    colours = colour_jitter(torch.rand(4, 3, 8, 8) * 2 - 1, AugmentConfig(), generator)
    assert colours.min() >= -1 and colours.max() <= 1
    with pytest.raises(ValueError, match="rotation_deg"):
        AugmentConfig(rotation_deg=-1)


def test_face_angles_follow_the_trajectory_conventions():
    from factorportrait.body import axis_angle_to_matrix
    from factorportrait.expression.sets import _axis_angle, face_angles, seen_face_angles

    yaw, pitch = torch.tensor([0.3, -0.5]), torch.tensor([0.2, 0.1])
    rotation = axis_angle_to_matrix(_axis_angle(yaw, pitch, torch.tensor([0.4, -0.2])))
    head_yaw, head_pitch = face_angles(-rotation[:, :, 2])
    assert torch.allclose(head_yaw, torch.rad2deg(yaw), atol=1e-4)
    assert torch.allclose(head_pitch, torch.rad2deg(pitch), atol=1e-4)
    camera = _frontal_camera()  # at -z looking at the face: a neutral head faces it
    seen_yaw, seen_pitch = seen_face_angles(torch.eye(3)[None], camera)
    assert abs(float(seen_yaw[0])) < 1e-4 and abs(float(seen_pitch[0])) < 1e-4
    turned = axis_angle_to_matrix(torch.tensor([[0.0, 0.3, 0.0]]))  # head yaw +0.3 rad
    seen_yaw, _ = seen_face_angles(turned, camera)
    assert abs(abs(float(seen_yaw[0])) - math.degrees(0.3)) < 1e-3
