"""Motion trainer augmentations (DeX §3.2, Fig. 3): eye and mouth masks counted against their
polygons' areas on MediaPipe's canonical face, the fixed (rotated) face crop of the expression
input and the cross-view driving frame."""

import math

import pytest
import torch
from scipy.spatial import ConvexHull

from factorportrait.expression.augment import AugmentConfig
from factorportrait.motion.augment import (MASK_RINGS, ViewGroup, cross_view_driving,
                                           expression_input, eye_mouth_mask,
                                           landmark_face_boxes, mask_eyes_and_mouth,
                                           mask_polygons, pixel_landmarks, polygon_mask)
from factorportrait.tracking.canonical import CHIN, NOSE_TIP, canonical_face
from factorportrait.tracking.crop import FaceBoxes, crop_faces

SIZE = 128
NO_AUGMENT = AugmentConfig(rotation_deg=0, scale_jitter=0, shift_jitter=0, brightness=0,
                           contrast=0, saturation=0)


def frontal_landmarks(count: int = 1, roll: float = 0.0) -> torch.Tensor:
    """``(N, 478, 2)`` normalised landmarks of the canonical face seen frontally (x right,
    y down), optionally turned in the image plane by ``roll`` radians."""
    face = canonical_face()[:, :2].float()
    points = torch.stack([face[:, 0] / 0.1, (face[:, 1] - 0.02) / 0.1], -1)
    c, s = math.cos(roll), math.sin(roll)
    points = points @ torch.tensor([[c, s], [-s, c]])
    return points.expand(count, -1, -1).clone()


def shoelace(polygon: torch.Tensor) -> float:
    x, y = polygon[:, 0].double(), polygon[:, 1].double()
    return 0.5 * abs(float((x * y.roll(-1) - x.roll(-1) * y).sum()))


def perimeter(polygon: torch.Tensor) -> float:
    return float((polygon - polygon.roll(-1, 0)).norm(dim=1).sum())


def test_polygon_mask_counts_an_axis_aligned_square_exactly():
    square = torch.tensor([[[2.0, 3.0], [7.0, 3.0], [7.0, 6.0], [2.0, 6.0]]])
    mask = polygon_mask(square, 10, 10)
    expected = torch.zeros(1, 10, 10, dtype=torch.bool)
    expected[0, 3:6, 2:7] = True  # centres 2.5 … 6.5 across, 3.5 … 5.5 down
    assert torch.equal(mask, expected)
    # a triangle of area 200: pixel count within a perimeter's width of it
    triangle = torch.tensor([[[1.0, 1.0], [41.0, 1.0], [1.0, 11.0]]])
    count = int(polygon_mask(triangle, 20, 50).sum())
    assert abs(count - 200) <= perimeter(triangle[0]) / 2


def test_mask_rings_are_simple_contours():
    """Each ring is ordered around its region: its shoelace area is its convex hull's."""
    face = canonical_face()[:, :2]
    for ring in MASK_RINGS:
        points = face[list(ring)]
        assert shoelace(points) == pytest.approx(ConvexHull(points.numpy()).volume, rel=0.02)


@pytest.mark.parametrize("expand", [1.0, 1.5])
def test_eye_mouth_mask_covers_the_regions_and_nothing_else(expand):
    landmarks = frontal_landmarks()
    mask = eye_mouth_mask(landmarks, SIZE, SIZE, expand=expand)[0, 0]
    polygons = [p[0] for p in mask_polygons(pixel_landmarks(landmarks, SIZE, SIZE), expand)]
    # Pixel count against the (disjoint) polygons' total area, within half a pixel per unit
    # of perimeter.
    area = sum(shoelace(p) for p in polygons)
    slack = sum(perimeter(p) for p in polygons) / 2
    assert area > 100 and abs(int(mask.sum()) - area) <= slack
    # Each region's pixels lie in that polygon's bounding box, and each region is covered.
    in_boxes = torch.zeros_like(mask)
    for polygon in polygons:
        low, high = polygon.amin(0).floor().long(), polygon.amax(0).ceil().long()
        in_boxes[low[1]:high[1], low[0]:high[0]] = True
        centre = polygon.mean(0).long()
        assert mask[centre[1], centre[0]]
    assert not (mask & ~in_boxes).any()
    for point in (NOSE_TIP, CHIN):  # not covered
        x, y = pixel_landmarks(landmarks, SIZE, SIZE)[0, point].long()
        assert not mask[y, x]


def test_pixel_and_normalised_landmarks_give_the_same_mask():
    landmarks = frontal_landmarks(2)
    pixels = pixel_landmarks(landmarks, SIZE, 96)
    assert torch.allclose(pixels[0, 0], (landmarks[0, 0] + 1) / 2 * torch.tensor([96.0, SIZE]))
    tracked = torch.cat([pixels, torch.zeros(2, 478, 1)], -1)  # (N, 478, 3) like FaceTrack
    assert torch.equal(eye_mouth_mask(landmarks, SIZE, 96),
                       eye_mouth_mask(tracked, SIZE, 96, coordinates="pixels"))
    with pytest.raises(ValueError, match="coordinates"):
        eye_mouth_mask(landmarks, SIZE, 96, coordinates="metres")
    with pytest.raises(ValueError, match="478"):
        eye_mouth_mask(landmarks[:, :468], SIZE, 96)


def test_mask_eyes_and_mouth_fills_only_the_mask():
    frames = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    landmarks = frontal_landmarks(2)
    masked = mask_eyes_and_mouth(frames, landmarks, fill=-1.0)
    mask = eye_mouth_mask(landmarks, SIZE, SIZE).expand_as(frames)
    assert (masked[mask] == -1).all()
    assert torch.equal(masked[~mask], frames[~mask])


def test_landmark_face_boxes_are_the_landmarks_bounding_square():
    landmarks = frontal_landmarks()
    boxes = landmark_face_boxes(landmarks, SIZE, SIZE)
    pixels = pixel_landmarks(landmarks, SIZE, SIZE)[0]
    low, high = pixels.amin(0), pixels.amax(0)
    assert torch.allclose(boxes.center[0], (low + high) / 2)
    assert boxes.side[0].item() == pytest.approx(float((high - low).max()))
    assert abs(boxes.roll[0].item()) < 0.05  # level pupils
    turned = landmark_face_boxes(frontal_landmarks(roll=0.3), SIZE, SIZE)
    assert turned.roll[0].item() == pytest.approx(0.3 + boxes.roll[0].item(), abs=1e-4)


def test_expression_input_is_the_fixed_face_crop_then_rotated():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1
    landmarks = frontal_landmarks(2)
    plain = expression_input(frames, landmarks, 32, NO_AUGMENT, torch.Generator())
    boxes = landmark_face_boxes(landmarks, SIZE, SIZE)
    fixed = crop_faces(frames, FaceBoxes(boxes.center, boxes.side, torch.zeros(2)), 32,
                       roll_normalise=True)
    assert plain.shape == (2, 3, 32, 32) and torch.allclose(plain, fixed, atol=1e-6)
    rotating = AugmentConfig(rotation_deg=30, scale_jitter=0, shift_jitter=0, brightness=0,
                             contrast=0, saturation=0)
    first = expression_input(frames, landmarks, 32, rotating, torch.Generator().manual_seed(1))
    again = expression_input(frames, landmarks, 32, rotating, torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and (first - plain).abs().mean() > 0.05


def test_expression_crop_ignores_head_translation_and_scale():
    """A face moved and scaled in the frame gives the same crop (up to resampling)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE),
                            indexing="ij")

    def render(shift: float, scale: float) -> torch.Tensor:  # a smooth pattern on the face
        u, v = (xx - shift) / scale, (yy - shift) / scale
        return torch.stack([torch.sin(3 * u), torch.cos(2 * v), u * v]).clamp(-1, 1)[None]

    landmarks = frontal_landmarks()
    crops = [expression_input(render(s, k), landmarks * k + s, 32, NO_AUGMENT, torch.Generator())
             for s, k in ((0.0, 1.0), (0.15, 0.8))]
    assert (crops[0] - crops[1]).abs().mean() < 0.03


def test_cross_view_driving_draws_another_view_at_the_same_instant():
    views, frames = 4, 3
    group = ViewGroup(torch.randn(views, frames, 3, 8, 8), torch.rand(views, frames, 478, 2))
    g = torch.Generator().manual_seed(0)
    drawn = set()
    for _ in range(40):
        image, landmarks, other = cross_view_driving(group, view=2, frame=1, generator=g)
        assert other != 2
        assert torch.equal(image, group.frames[other, 1])
        assert torch.equal(landmarks, group.landmarks[other, 1])
        drawn.add(other)
    assert drawn == {0, 1, 3}
    single = ViewGroup(group.frames[:1], group.landmarks[:1])
    assert cross_view_driving(single, 0, 2, g)[2] == 0
    with pytest.raises(ValueError, match="outside"):
        cross_view_driving(group, view=4, frame=0, generator=g)
    with pytest.raises(ValueError, match="landmarks must be"):
        ViewGroup(group.frames, group.landmarks[:, :2])
