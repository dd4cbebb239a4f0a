"""Tracking's pure functions, on analytic values: One-Euro smoothing and gap filling, POSIT,
triangulation, the multi-view fit, DeX's relative RTS, and the canonical face's conventions."""

import math

import pytest
import torch

from factorportrait.geometry.rotations import (axis_angle_to_matrix, matrix_to_axis_angle,
                                               rotation_angle, rotation_z)
from factorportrait.geometry.trajectories import static
from factorportrait.tracking.canonical import (LEFT_PUPIL, NOSE_TIP, RIGHT_PUPIL, RIGID,
                                               canonical_face, triangulate)
from factorportrait.tracking.pose import HeadPose, fit_head_pose, fit_multiview_pose, posit
from factorportrait.tracking.smoothing import (OneEuro, fill_missing, one_euro,
                                               quaternion_continuity)


def project(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
            K: torch.Tensor) -> torch.Tensor:
    """Pinhole images ``(F, P, 2)`` of head-frame points moved by ``x ↦ R x + t``."""
    cam = torch.einsum("fij,pj->fpi", rotation, points) + translation[:, None]
    return cam[..., :2] / cam[..., 2:] * K.diagonal()[:2] + K[:2, 2]


def random_poses(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    axis_angle = (torch.rand(count, 3, generator=g, dtype=torch.float64) - 0.5) * 0.9
    translation = torch.stack([(torch.rand(count, generator=g, dtype=torch.float64) - 0.5) * 0.1,
                               (torch.rand(count, generator=g, dtype=torch.float64) - 0.5) * 0.1,
                               0.4 + torch.rand(count, generator=g, dtype=torch.float64)], -1)
    return axis_angle_to_matrix(axis_angle), translation


def test_one_euro_keeps_constants_and_reaches_a_step():
    still = torch.full((30, 4), 2.5)
    assert torch.equal(one_euro(still, 25.0, OneEuro()), still)
    step = torch.cat([torch.zeros(40), torch.ones(40)])[:, None]
    smooth = one_euro(step, 25.0, OneEuro(min_cutoff=2.0, beta=0.0))
    assert abs(float(smooth[0])) < 1e-6 and abs(float(smooth[-1]) - 1) < 1e-3
    assert 0.0 < float(smooth[39]) < 0.5 < float(smooth[40]) < 1.0  # blurred, not lagged


def test_zero_phase_one_euro_does_not_lag_a_ramp():
    ramp = torch.linspace(0, 10, 101, dtype=torch.float64)[:, None]
    causal = one_euro(ramp, 25.0, OneEuro(min_cutoff=1.0, beta=0.0, zero_phase=False))
    both = one_euro(ramp, 25.0, OneEuro(min_cutoff=1.0, beta=0.0))
    assert float((ramp - causal)[50]) > 0.3  # the causal filter trails a ramp (by 0.4)
    assert abs(float((ramp - both)[50])) < 1e-3  # forwards + backwards cancels it


def test_one_euro_opens_with_speed():
    g = torch.Generator().manual_seed(0)
    jump = torch.cat([torch.zeros(20), torch.full((20,), 5.0)])[:, None]
    noisy = jump + 0.05 * torch.randn(40, 1, generator=g)
    slow = one_euro(noisy, 25.0, OneEuro(min_cutoff=0.5, beta=0.0, zero_phase=False))
    fast = one_euro(noisy, 25.0, OneEuro(min_cutoff=0.5, beta=5.0, zero_phase=False))
    assert float(fast[24]) > float(slow[24]) + 1.0  # the speed term follows the jump sooner


def test_one_euro_rejects_bad_parameters():
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuro(min_cutoff=0)
    with pytest.raises(ValueError, match="beta"):
        OneEuro(beta=-1)


def test_fill_missing_interpolates_and_holds_the_ends():
    values = torch.tensor([0.0, 0.0, 2.0, 0.0, 0.0, 8.0, 0.0])[:, None]
    present = torch.tensor([False, False, True, False, False, True, False])
    filled = fill_missing(values, present)[:, 0]
    assert torch.allclose(filled, torch.tensor([2.0, 2.0, 2.0, 4.0, 6.0, 8.0, 8.0]))
    with pytest.raises(ValueError, match="no frame"):
        fill_missing(values, torch.zeros(7, dtype=torch.bool))


def test_quaternion_continuity_flips_to_one_hemisphere():
    q = torch.tensor([[1.0, 0, 0, 0], [-0.99, -0.14, 0, 0], [0.98, 0.2, 0, 0]])
    out = quaternion_continuity(q)
    assert (out[:, 0] > 0).all() and torch.allclose(out[1], -q[1])


def test_canonical_face_is_in_the_avatar_head_frame():
    face = canonical_face()
    assert face.shape == (478, 3)
    assert face[LEFT_PUPIL, 0] > 0 > face[RIGHT_PUPIL, 0]  # x = the subject's left
    assert face[NOSE_TIP, 2] < face[LEFT_PUPIL, 2] < 0  # the face looks along -z
    ipd = float((face[LEFT_PUPIL] - face[RIGHT_PUPIL]).norm())
    assert 0.04 < ipd < 0.065  # metres


def test_posit_recovers_a_perspective_pose_exactly():
    K = static(1, width=512, height=512).K[0].double()
    model = canonical_face()[list(RIGID)]
    rotation, translation = random_poses(6)
    pose = posit(model, project(model, rotation, translation, K), K, iterations=30)
    assert float(rotation_angle(pose.rotation @ rotation.transpose(1, 2)).max()) < 1e-6
    assert torch.allclose(pose.head_translation(K).double(), translation, atol=1e-6)


def test_fit_head_pose_conventions_roll_and_depth():
    """A head turned counter-clockwise on screen by θ is a rotation of θ about −z; a head
    that appears 1.25× larger is at depth z / 1.25 (to 2 % at 1 m: the fit is perspective,
    and a flat 2D zoom is not exactly any head moved closer)."""
    K = static(1, width=512, height=512).K[0].double()
    face = canonical_face()
    centre = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    landmarks = project(face, torch.eye(3, dtype=torch.float64)[None], centre, K)
    frame_centre = K[:2, 2]
    theta = math.radians(15.0)
    ccw = torch.tensor([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]],
                       dtype=torch.float64)  # on screen (y down), counter-clockwise
    turned = (landmarks - frame_centre) @ ccw.T + frame_centre
    zoomed = (landmarks - frame_centre) * 1.25 + frame_centre
    pose, residual = fit_head_pose(torch.cat([landmarks, turned, zoomed]), K)
    relative = matrix_to_axis_angle(pose.rotation[1] @ pose.rotation[0].T)
    assert torch.allclose(relative, torch.tensor([0.0, 0.0, -theta], dtype=torch.float64),
                          atol=1e-3)
    depth = pose.head_translation(K)[:, 2]
    assert abs(float(depth[2] / depth[0]) * 1.25 - 1) < 0.02
    assert float(residual[0]) < 1e-6


def test_head_pose_track_round_trip_and_relative_rts():
    K = static(1, width=256, height=256).K[0].double()
    rotation, translation = random_poses(4, seed=3)
    pose = HeadPose.from_track(matrix_to_axis_angle(rotation), translation, K)
    assert torch.allclose(pose.head_translation(K).double(), translation, atol=1e-5)
    rts = pose.relative_rts(256, 256, reference=1)
    assert torch.allclose(rts[1], torch.eye(3, 4, dtype=torch.float64), atol=1e-9)
    # P carries the reference head's image points onto each frame's (scaled orthographic)
    points = canonical_face()[:5]
    norm = lambda p: (p - 128.0) / 128.0  # noqa: E731 (u, v) of head_pose_ray_map

    def ortho(i: int) -> torch.Tensor:  # (5, 3) image-plane points of frame i, z relative
        moved = points @ pose.rotation[i].T
        return torch.cat([norm(pose.scale[i] * moved[:, :2] + pose.center[i]),
                          pose.scale[i] * moved[:, 2:] / 128.0], 1)

    for i in range(4):
        mapped = ortho(1) @ rts[i, :, :3].T + rts[i, :, 3]
        assert torch.allclose(mapped, ortho(i), atol=1e-6)


def test_triangulation_and_multiview_fit_are_exact_on_clean_views():
    cameras = [static(1, yaw_deg=yaw, elevation_deg=e, distance=0.9, fov_deg=30.0, width=256,
                      height=256, dtype=torch.float64) for yaw, e in ((-35, 5), (0, 0), (35, 10))]
    w2c = torch.cat([c.world_to_camera() for c in cameras])
    K = torch.cat([c.K for c in cameras])
    rotation, translation = random_poses(3, seed=5)
    translation[:, 2] -= 0.9  # around the world origin
    face = canonical_face()
    images = torch.stack([project(face, w2c[v, :3, :3] @ rotation,
                                  translation @ w2c[v, :3, :3].T + w2c[v, :3, 3], K[v])
                          for v in range(3)])  # (V, F, 478, 2)
    centre_images = torch.stack([project(torch.zeros(1, 3, dtype=torch.float64),
                                         w2c[v, :3, :3] @ rotation,
                                         translation @ w2c[v, :3, :3].T + w2c[v, :3, 3],
                                         K[v])[:, 0] for v in range(3)])  # (V, F, 2)
    assert torch.allclose(triangulate(centre_images, w2c[:, :3, :3], w2c[:, :3, 3], K),
                          translation, atol=1e-9)
    start = rotation @ axis_angle_to_matrix(torch.tensor([0.1, -0.08, 0.05],
                                                         dtype=torch.float64))
    fitted_r, fitted_t = fit_multiview_pose(images, w2c, K, start, translation + 0.02)
    assert float(rotation_angle(fitted_r @ rotation.transpose(1, 2)).max()) < 1e-6
    assert torch.allclose(fitted_t, translation, atol=1e-7)


def test_rotation_about_minus_z_turns_the_view_counter_clockwise():
    """The convention in one line: R_z(−θ) moves image +x towards −y (up on screen)."""
    R = rotation_z(torch.tensor(-0.3, dtype=torch.float64))
    x = R @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    assert x[1] < 0
