"""Crops as similarity transforms and their inverse: the round trip, the feathered mask, the
colour match, and paste-back of an unmodified crop of a real photo."""

import math

import pytest
import torch

from factorportrait.evaluation import psnr
from factorportrait.tracking.crop import (FaceBoxes, colour_match, crop_faces, crop_transform,
                                          feather_mask, frame_to_crop_grid, paste_back)
from tests.real_faces import astronaut


def photo() -> torch.Tensor:
    return astronaut().permute(2, 0, 1)[None].float()  # (1, 3, 512, 512) in [0, 255]


def test_frame_to_crop_grid_inverts_crop_transform():
    boxes = FaceBoxes(torch.tensor([[200.3, 150.7], [60.0, 40.0]]), torch.tensor([120.0, 33.0]),
                      torch.tensor([0.3, -0.7]))
    height, width, crop_h, crop_w = 90, 160, 24, 40
    theta = crop_transform(boxes, height, width, roll_normalise=True, aspect=crop_w / crop_h)
    grid = frame_to_crop_grid(boxes, height, width, (crop_h, crop_w), roll_normalise=True)
    crop_xy = grid.reshape(2, -1, 2)  # crop coordinates of every frame pixel centre
    frame = crop_xy @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]  # back to [-1, 1]
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5,
                            indexing="ij")
    expected = torch.stack([2 * xs / width - 1, 2 * ys / height - 1], -1).reshape(1, -1, 2)
    assert torch.allclose(frame, expected.expand(2, -1, -1), atol=1e-5)


def test_crop_of_a_rotated_box_is_the_rotated_content():
    """A 90° box turns the content by 90°: exact on the pixel grid."""
    image = torch.arange(64.0).reshape(1, 1, 8, 8).expand(1, 3, 8, 8)
    box = FaceBoxes(torch.tensor([[4.0, 4.0]]), torch.tensor([8.0]),
                    torch.tensor([math.pi / 2]))
    crop = crop_faces(image, box, 8, roll_normalise=True)
    assert torch.allclose(crop[0, 0], torch.rot90(image[0, 0], 1, (0, 1)), atol=1e-4)


def test_feather_mask_is_one_inside_zero_outside():
    grid = torch.tensor([[[[0.0, 0.0], [0.95, 0.0], [1.2, 0.0], [0.5, 0.5]]]])
    mask = feather_mask(grid, 0.2)[0, 0, 0]
    assert mask[0] == 1 and mask[3] == 1 and mask[2] == 0 and 0 < mask[1] < 1


def test_colour_match_undoes_a_gain_and_offset():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 16, 16, generator=g)
    shifted = target * torch.tensor([1.3, 0.8, 1.1])[:, None, None] + 0.2
    weight = torch.ones(3, 1, 16, 16)
    assert torch.allclose(colour_match(shifted, target, weight), target, atol=1e-5)
    assert torch.allclose(colour_match(target, target, weight), target, atol=1e-6)


def test_paste_back_of_an_unmodified_crop_reproduces_the_photo():
    """≥ 40 dB PSNR over the photo, with a sub-pixel, turned box and the colour match on;
    inside the pasted region alone (two bicubic resamplings) ≥ 38 dB."""
    image = photo()
    box = FaceBoxes(torch.tensor([[223.4, 151.7]]), torch.tensor([231.3]), torch.tensor([0.12]))
    crop = crop_faces(image, box, 512, roll_normalise=True, mode="bicubic")
    pasted = paste_back(crop, image, box, roll_normalise=True)
    whole = float(psnr(pasted, image, 255.0))
    inside = frame_to_crop_grid(box, 512, 512, 512, True).abs().amax(-1) < 0.8
    face = float(psnr(pasted[..., inside[0]], image[..., inside[0]], 255.0))
    assert whole >= 40.0 and face >= 38.0, (whole, face)  # measured 47.2 and 39.8 dB


def test_paste_back_puts_a_modified_crop_where_it_came_from():
    image = photo()
    box = FaceBoxes(torch.tensor([[224.0, 150.0]]), torch.tensor([200.0]), torch.zeros(1))
    crop = torch.zeros(1, 3, 64, 64)
    crop[:, 0] = 255.0  # a red square
    pasted = paste_back(crop, image, box, match_colour=False)
    assert torch.allclose(pasted[0, :, 150, 224], torch.tensor([255.0, 0.0, 0.0]), atol=1e-3)
    assert torch.equal(pasted[0, :, 10, 10], image[0, :, 10, 10])  # outside: untouched
    with pytest.raises(ValueError, match="paste_back"):
        paste_back(crop, image, FaceBoxes.cat([box, box]))
