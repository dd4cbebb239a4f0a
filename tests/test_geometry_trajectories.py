"""Trajectory presets reach their stated end states; easing, composition, registry, ViewSweep."""

import math

import pytest
import torch
from torch.testing import assert_close

from factorportrait.geometry import (
    DEFAULT_DISTANCE,
    TRAJECTORY_PRESETS,
    arc,
    dolly,
    ease,
    hold,
    jitter,
    look_at,
    make_trajectory,
    orbit,
    pan,
    reverse,
    sample_viewsweep,
    sequence,
    spiral,
    static,
    tilt,
    view_angles,
    zoom,
)
from factorportrait.geometry.rotations import rotation_angle

F64 = torch.float64
TARGET = torch.tensor([0.01, -0.02, 0.03], dtype=F64)


def assert_looks_at(cams, target: torch.Tensor) -> None:
    to_target = target - cams.centers()
    forward = cams.rotations()[:, :, 2]
    assert_close(forward, to_target / to_target.norm(dim=-1, keepdim=True))
    assert_close(cams.rotations()[:, 1, 0], torch.zeros(len(cams), dtype=F64))  # upright


def test_orbit_by_90_degrees_ends_at_yaw_90() -> None:
    cams = orbit(13, 90.0, distance=0.5, target=TARGET.tolist(), dtype=F64)
    yaw, pitch = view_angles(cams)
    assert_close(yaw, torch.linspace(0, 90, 13, dtype=F64))
    assert_close(pitch, torch.zeros(13, dtype=F64))
    assert_close(cams.centers()[-1], TARGET + torch.tensor([-0.5, 0, 0], dtype=F64))
    assert_close((cams.centers() - TARGET).norm(dim=-1), torch.full((13,), 0.5, dtype=F64))
    assert_looks_at(cams, TARGET)
    spin = orbit(9, 360.0, dtype=F64)  # full spin: the last frame is the first again
    assert_close(spin.c2w[-1], spin.c2w[0])


def test_look_at_agrees_with_orbit_rotations() -> None:
    cams = spiral(7, 200.0, end_elevation_deg=40.0, elevation_deg=-30.0, dtype=F64)
    assert_close(look_at(cams.centers(), (0.0, 0.0, 0.0)), cams.c2w)


def test_spiral_arc_dolly_zoom_end_states() -> None:
    sp = spiral(11, 120.0, end_elevation_deg=20.0, end_distance=0.4, target=TARGET.tolist(),
                dtype=F64)
    yaw, pitch = view_angles(sp)
    assert math.isclose(float(yaw[-1]), 120.0, abs_tol=1e-9)
    assert math.isclose(float(pitch[-1]), -20.0, abs_tol=1e-9)
    assert math.isclose(float((sp.centers()[-1] - TARGET).norm()), 0.4, abs_tol=1e-12)
    assert_looks_at(sp, TARGET)
    up = arc(5, 30.0, distance=0.5, dtype=F64)  # rise over the head: above (y < 0), looking down
    sin, cos = math.sin(math.radians(30)), math.cos(math.radians(30))
    expected = torch.tensor([0.0, -0.5 * sin, -0.5 * cos], dtype=F64)
    assert_close(up.centers()[-1], expected)
    assert math.isclose(float(view_angles(up)[1][-1]), -30.0, abs_tol=1e-9)
    do = dolly(6, 0.35, yaw_deg=20.0, dtype=F64)
    ends = torch.tensor([DEFAULT_DISTANCE, 0.35], dtype=F64)
    assert_close(do.centers().norm(dim=-1)[[0, -1]], ends)
    assert_close(do.rotations(), do.rotations()[:1].expand(6, 3, 3))
    zo = zoom(6, end_focal=900.0, width=320, height=240, dtype=F64)
    assert_close(zo.focal_lengths()[-1], torch.tensor([900.0, 900.0], dtype=F64))
    assert_close(zo.principal_points()[-1], torch.tensor([160.0, 120.0], dtype=F64))
    assert_close(zo.c2w, zo.c2w[:1].expand(6, 4, 4))


def test_pan_tilt_rotate_in_place_and_static() -> None:
    start = static(1, yaw_deg=10.0, elevation_deg=5.0, dtype=F64)
    view = dict(yaw_deg=10.0, elevation_deg=5.0, dtype=F64)
    for cams, yaw_end, pitch_end in ((pan(5, 30.0, **view), 40.0, -5.0),
                                     (tilt(5, 15.0, **view), 10.0, 10.0)):
        assert_close(cams.centers(), start.centers().expand(5, 3))
        yaw, pitch = view_angles(cams)
        assert math.isclose(float(yaw[-1]), yaw_end, abs_tol=1e-9)
        assert math.isclose(float(pitch[-1]), pitch_end, abs_tol=1e-9)
    still = static(4, yaw_deg=-45.0, dtype=F64)
    assert_close(still.c2w, still.c2w[:1].expand(4, 4, 4))
    half = math.sqrt(0.5)
    assert_close(still.centers()[0], 0.6 * torch.tensor([half, 0, -half], dtype=F64))


def test_ease_in_out_has_zero_velocity_at_both_ends() -> None:
    t = torch.tensor([0.0, 1.0], dtype=F64, requires_grad=True)
    (velocity,) = torch.autograd.grad(ease(t, "ease_in_out").sum(), t)
    assert_close(velocity, torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)
    assert_close(ease(torch.tensor([0.0, 0.5, 1.0], dtype=F64), "ease_in_out"),
                               torch.tensor([0.0, 0.5, 1.0], dtype=F64))
    yaw = view_angles(orbit(101, 90.0, easing="ease_in_out", dtype=F64))[0]
    steps = yaw.diff()
    assert float(steps[0]) < 0.02 * float(steps[50]) and float(steps[-1]) < 0.02 * float(steps[50])
    assert math.isclose(float(yaw[-1]), 90.0, abs_tol=1e-9)


def test_composition() -> None:
    a, b = orbit(5, 90.0, dtype=F64), arc(3, 20.0, yaw_deg=90.0, dtype=F64)
    seq = sequence(a, hold(a, 2), b)
    assert len(seq) == 10
    assert_close(seq.c2w[5:7], a.c2w[-1:].expand(2, 4, 4))
    assert_close(seq[7:].c2w, b.c2w)
    assert_close(reverse(a).c2w, a.c2w.flip(0))
    shaken = jitter(a, rotation_deg=2.0, translation_m=0.01, seed=3)
    assert_close(shaken.c2w, jitter(a, 2.0, 0.01, seed=3).c2w, atol=0, rtol=0)
    assert not torch.allclose(shaken.c2w, jitter(a, 2.0, 0.01, seed=4).c2w)
    angles = torch.rad2deg(rotation_angle(a.rotations().transpose(1, 2) @ shaken.rotations()))
    assert 0 < float(angles.max()) < 15.0
    assert 0 < float((shaken.centers() - a.centers()).abs().max()) < 0.06
    assert_close(jitter(a, 0.0, 0.0).c2w, a.c2w)


def test_registry_builds_presets_and_rejects_bad_requests() -> None:
    names = {"orbit", "spiral", "arc", "dolly", "zoom", "pan", "tilt", "static"}
    assert set(TRAJECTORY_PRESETS) == names
    assert_close(make_trajectory("orbit", frames=5, degrees=45.0).c2w, orbit(5, 45.0).c2w)
    for name, preset in TRAJECTORY_PRESETS.items():
        assert len(make_trajectory(name, frames=3)) == 3, name
        assert len(preset(1)) == 1
    bad = [
        (dict(name="wobble", frames=5),
         "unknown trajectory preset 'wobble'; valid choices: orbit, spiral"),
        (dict(name="dolly", frames=5, degrees=3.0),
         "no parameter.*degrees.*valid choices: frames, end_distance"),
        (dict(name="orbit"), "needs frames"),
        (dict(name="orbit", frames=0), "frames must be an int >= 1"),
        (dict(name="orbit", frames=5, distance=-1.0), "distance must be a positive number"),
        (dict(name="dolly", frames=5, end_distance=0.0), "end_distance must be a positive number"),
        (dict(name="zoom", frames=5, end_focal=-3.0), "end_focal must be a positive number"),
        (dict(name="orbit", frames=5, easing="bounce"),
         "unknown easing 'bounce'; valid choices: linear, ease_in_out"),
        (dict(name="orbit", frames=5, fov_deg=0.0), r"fov_deg must be in \(0, 180\)"),
        (dict(name="orbit", frames=5, target=(0.0, 1.0)), "target must be 3 finite numbers"),
    ]
    for request, message in bad:
        with pytest.raises(ValueError, match=message):
            make_trajectory(request.pop("name"), **request)
    with pytest.raises(ValueError, match="hold: frames"):
        hold(orbit(2), 0)
    with pytest.raises(ValueError, match="rotation_deg must be"):
        jitter(orbit(2), rotation_deg=-1.0)


@pytest.mark.parametrize("kind", ["spin", "spiral"])
def test_viewsweep_sampler(kind: str) -> None:
    cams = sample_viewsweep(40, seed=7, kind=kind, dtype=F64)
    assert_close(cams.c2w, sample_viewsweep(40, seed=7, kind=kind, dtype=F64).c2w, atol=0, rtol=0)
    assert not torch.allclose(cams.c2w, sample_viewsweep(40, seed=8, kind=kind, dtype=F64).c2w)
    assert (cams.width, cams.height) == (1024, 1024)
    fov = 2 * math.degrees(math.atan(512 / float(cams.K[0, 0, 0])))
    assert math.isclose(fov, 72.0, abs_tol=1e-9)
    # every camera looks at one common point near the head centre, from 25–40 cm
    forward, centers = cams.rotations()[:, :, 2], cams.centers()
    proj = torch.eye(3, dtype=F64) - forward[:, :, None] * forward[:, None, :]
    target = torch.linalg.solve(proj.sum(0), (proj @ centers[:, :, None]).sum(0))[:, 0]
    assert float(target.abs().max()) <= 0.02 + 1e-9
    assert_looks_at(cams, target)
    dist = (centers - target).norm(dim=-1)
    assert float(dist.min()) >= 0.25 - 1e-9 and float(dist.max()) <= 0.40 + 1e-9
    yaw, pitch = view_angles(cams)
    if kind == "spin":
        assert float(pitch.abs().max()) <= 5.0 + 1e-9
        assert float(yaw.diff().abs().remainder(360).min()) > 0  # moving every frame
        step = torch.deg2rad(yaw.diff())
        turn = torch.atan2(torch.sin(step), torch.cos(step)).sum()  # unwrapped total turn
        assert math.isclose(abs(math.degrees(float(turn))), 360.0 * 39 / 40, abs_tol=1e-6)
    else:
        assert float(yaw.abs().max()) <= 90.0 + 1e-9
    with pytest.raises(ValueError, match="unknown kind 'loop'; valid choices: spin, spiral"):
        sample_viewsweep(10, seed=0, kind="loop")
