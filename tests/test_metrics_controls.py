"""Per-control accuracy from generated frames (factorportrait.evaluation.controls): masks,
IoU, colour distributions and their distances against analytic values, and the silhouette
measure on real avatar renders."""

from __future__ import annotations

import math

import pytest
import torch

from factorportrait.data.synthetic import ClipSpec, SyntheticConfig, make_avatar, render_clip
from factorportrait.evaluation.controls import (
    colour_distance,
    colour_quantiles,
    expression_rmse,
    foreground_mask,
    mask_iou,
    normal_map_mask,
    read_expression,
    silhouette_iou,
)
from factorportrait.models.expression_encoder import ExpressionEncoder, ExpressionEncoderConfig
from factorportrait.tracking.crop import center_boxes

pytestmark = pytest.mark.usefixtures("one_thread")


def white(frames: int, size: int) -> torch.Tensor:
    return torch.full((frames, size, size, 3), 255, dtype=torch.uint8)


def test_foreground_and_normal_masks_are_the_painted_pixels():
    frames = white(2, 16)
    frames[0, 2:6, 3:9] = torch.tensor([200, 40, 40], dtype=torch.uint8)
    frames[1, 10:12, 0:4] = 240  # 15 grey levels from white: background
    mask = foreground_mask(frames)
    expected = torch.zeros(2, 16, 16, dtype=torch.bool)
    expected[0, 2:6, 3:9] = True
    assert torch.equal(mask, expected)
    normals = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    normals[0, 1:3, 1:4] = torch.tensor([128, 128, 255], dtype=torch.uint8)  # facing camera
    normals[0, 5, 5] = torch.tensor([0, 128, 128], dtype=torch.uint8)  # n = (-1, 0, 0)
    truth = torch.zeros(1, 8, 8, dtype=torch.bool)
    truth[0, 1:3, 1:4], truth[0, 5, 5] = True, True
    assert torch.equal(normal_map_mask(normals), truth)
    with pytest.raises(ValueError, match="uint8"):
        foreground_mask(frames.float())


def test_mask_iou_of_overlapping_squares_is_analytic():
    a = torch.zeros(3, 20, 20, dtype=torch.bool)
    b = torch.zeros_like(a)
    a[0, 0:10, 0:10], b[0, 5:15, 0:10] = True, True  # overlap 50 of 150
    a[1, 0:4, 0:4] = True  # disjoint from an empty mask: 0
    iou = mask_iou(a, b)  # frame 2: both empty -> 1
    assert iou.tolist() == pytest.approx([50 / 150, 0.0, 1.0], abs=1e-7)


def test_colour_distance_of_constant_colours_is_their_mean_channel_difference():
    frames = white(2, 8)
    frames[0, 2:6, 2:6] = torch.tensor([200, 40, 40], dtype=torch.uint8)
    frames[1, 2:6, 2:6] = torch.tensor([180, 40, 100], dtype=torch.uint8)
    quantiles = colour_quantiles(frames)
    assert quantiles.shape == (2, 3, 64)
    assert torch.allclose(quantiles[0, :, 0], torch.tensor([200, 40, 40]) / 255)
    expected = (20 + 0 + 60) / 3 / 255
    assert colour_distance(quantiles[0], quantiles[1]).item() == pytest.approx(expected, abs=1e-6)
    half = frames[:1].clone()
    half[0, 2:4, 2:6] = torch.tensor([180, 40, 100], dtype=torch.uint8)  # half each colour
    assert colour_distance(colour_quantiles(half)[0], quantiles[0]).item() == pytest.approx(
        expected / 2, abs=1e-6)  # Wasserstein-1: half the mass moves the whole way


def test_expression_readout_is_the_encoders_parameter_head_on_its_crops():
    torch.manual_seed(0)
    encoder = ExpressionEncoder(ExpressionEncoderConfig.tiny(crop_size=32)).eval()
    frames = torch.randint(0, 256, (3, 48, 48, 3), dtype=torch.uint8)
    boxes = center_boxes(48, 48, 3, fraction=0.5)
    from factorportrait.expression.codes import EncoderCodeSource

    codes = EncoderCodeSource(encoder)(frames.permute(0, 3, 1, 2).float() / 127.5 - 1, boxes)
    expected = encoder.predict_parameters(codes)
    assert torch.allclose(read_expression(encoder, frames, boxes), expected, atol=1e-6)
    target = expected + torch.tensor([0.3, -0.4] + [0.0] * (expected.shape[1] - 2))
    rmse = expression_rmse(expected, target)
    assert rmse.tolist() == pytest.approx([0.5 / math.sqrt(expected.shape[1])] * 3, abs=1e-6)
    with pytest.raises(ValueError, match="2 face boxes for 3 frames"):
        read_expression(encoder, frames, boxes[:2])


@pytest.fixture(scope="module")
def rendered_clip():
    config = SyntheticConfig(identities=2, heldout=1, frames=5, width=64, height=64,
                             studio_views=2, seed=3)
    spec = ClipSpec("syn0000_dynamicsweep00", "dynamicsweep", "syn0000", 0, 0, None, None,
                    "train")
    return render_clip(spec, config, make_avatar(config, 0))


def test_silhouette_of_a_render_matches_its_normal_map_and_drops_when_shifted(rendered_clip):
    rgb, normals = rendered_clip.rgb, rendered_clip.normals
    own = silhouette_iou(rgb, normals)
    assert float(own.min()) > 0.99  # measured 0.9992-1.0
    shifted = torch.roll(rgb, shifts=6, dims=2)  # the subject 6 px to the right
    assert float(silhouette_iou(shifted, normals).max()) < 0.7  # measured 0.55-0.64
    frozen = rgb[[0] * len(rgb)]  # the first frame held: the moving camera is missed
    assert float(silhouette_iou(frozen, normals)[1:].mean()) < 0.8  # measured 0.72
