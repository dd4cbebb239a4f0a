"""Each control mode is a documented way of filling PortraitConditions: check the fills."""

import pytest
import torch

from factorportrait.geometry import dit_rays, make_trajectory, save_cameras
from factorportrait.inference import (MODE_FACTORS, ControlTrack, default_reference_camera,
                                      plan_controls, render_normal_maps)
from tests.pipeline_helpers import (FRAMES, SIZE, driving_track, mesh_source, reference_image,
                                    tiny_pipeline, tiny_vae)

REFERENCE_CODE = torch.linspace(-1, 1, 128)[None]  # (1, 128)


def reference_track() -> ControlTrack:
    """The reference's controls: frontal camera, a slight head turn, a smile, a code."""
    return ControlTrack(cameras=default_reference_camera(SIZE, SIZE),
                        expression_codes=REFERENCE_CODE,
                        head_rotation=torch.tensor([[0.0, -0.2, 0.0]]),
                        head_translation=torch.zeros(1, 3),
                        expression=torch.tensor([[0, 0.6, 0, 0, 0, 0, 0, 0.0]]))


def trajectory():
    return make_trajectory("orbit", frames=FRAMES, degrees=30, width=SIZE, height=SIZE)


def plan(mode, **sources):
    cameras = None if MODE_FACTORS[mode].camera == "reference" else trajectory()
    return plan_controls(mode, FRAMES, reference_track(), trajectory=cameras, **sources)


def conditions_for(mode: str, **inputs):
    pipe = tiny_pipeline()
    request = pipe.check_inputs(reference_image(), mode=mode, reference=reference_track(),
                                **inputs)
    return pipe.encode_conditions(request, pipe.plan(request))


def identity_rays_everywhere(rays: torch.Tensor) -> bool:
    """Every latent frame's 4 packed frames equal frame 0's (the identity camera)."""
    return torch.allclose(rays, rays[:, :, :1].expand_as(rays), atol=1e-6)


def test_expression_only_passes_identity_rays_and_reference_pose_normals():
    track = driving_track().replace(expression=None)  # codes only: the mesh stays the reference
    conditions = conditions_for("expression_only", control_track=track)
    assert identity_rays_everywhere(conditions.rays)
    assert torch.equal(conditions.expression[0], track.expression_codes)
    reference_normals = render_normal_maps(mesh_source(), reference_track(),
                                           default_reference_camera(SIZE, SIZE), SIZE, SIZE)
    video = (reference_normals[0] * 2 - 1)[:, None].expand(3, FRAMES, SIZE, SIZE)
    expected = tiny_vae().encode(video[None])  # the reference pose's normals, every frame
    assert torch.allclose(conditions.normal_latents, expected, atol=1e-5)


def test_pose_only_passes_the_reference_expression_and_identity_rays():
    track = driving_track()
    conditions = conditions_for("pose_only", control_track=track)
    assert torch.equal(conditions.expression[0], REFERENCE_CODE.expand(FRAMES, -1))
    assert identity_rays_everywhere(conditions.rays)
    fill = plan("pose_only", driving=track)
    assert torch.equal(fill.mesh_pose.head_rotation, track.head_rotation)
    assert torch.equal(fill.mesh_pose.expression, reference_track().expression.expand(FRAMES, -1))


def test_camera_only_holds_pose_and_expression_and_follows_the_trajectory():
    conditions = conditions_for("camera_only", camera_trajectory=trajectory(),
                                num_frames=FRAMES)
    assert torch.equal(conditions.expression[0], REFERENCE_CODE.expand(FRAMES, -1))
    expected = dit_rays(default_reference_camera(SIZE, SIZE), trajectory(), SIZE, SIZE)
    assert torch.allclose(conditions.rays[0], expected, atol=1e-6)
    assert not identity_rays_everywhere(conditions.rays)
    fill = plan("camera_only")
    assert torch.equal(fill.mesh_pose.head_rotation,
                       reference_track().head_rotation.expand(FRAMES, -1))


@pytest.mark.parametrize("mode", ["driving", "driving_with_camera", "driving_novel_view"])
def test_driving_modes_take_pose_and_expression_from_the_driving_track(mode):
    track = driving_track()
    fill = plan(mode, driving=track)
    assert torch.equal(fill.expression_codes, track.expression_codes)
    assert torch.equal(fill.mesh_pose.head_rotation, track.head_rotation)
    assert torch.equal(fill.mesh_pose.expression, track.expression)
    reference_c2w = reference_track().cameras.c2w.expand(FRAMES, -1, -1)
    assert torch.equal(fill.reference_camera.c2w, reference_track().cameras.c2w)
    cameras = {"driving": reference_c2w, "driving_with_camera": trajectory().c2w,
               "driving_novel_view": trajectory().c2w[:1].expand(FRAMES, -1, -1)}[mode]
    assert torch.allclose(fill.cameras.c2w, cameras.float())


def test_mixed_takes_expression_from_a_pose_from_b_camera_from_a_file(tmp_path):
    clip_a, clip_b = driving_track(seed=1), driving_track(seed=2).replace(
        head_rotation=torch.randn(FRAMES, 3) * 0.1)
    save_cameras(trajectory(), tmp_path / "cams.json")
    pipe = tiny_pipeline()
    request = pipe.check_inputs(reference_image(), mode="mixed", expression_source=clip_a,
                                pose_source=clip_b, camera_trajectory=tmp_path / "cams.json",
                                reference=reference_track())
    fill = pipe.plan(request)
    assert torch.equal(fill.expression_codes, clip_a.expression_codes)
    assert torch.equal(fill.mesh_pose.head_rotation, clip_b.head_rotation)
    assert torch.equal(fill.mesh_pose.expression, clip_a.expression)  # the face follows A
    assert torch.allclose(fill.cameras.c2w, trajectory().c2w, atol=1e-6)


def test_default_reference_is_frontal_neutral_at_rest():
    pipe = tiny_pipeline()
    request = pipe.check_inputs(reference_image(), mode="camera_only",
                                camera_trajectory="orbit", num_frames=FRAMES)
    fill = pipe.plan(request)  # no encoder: the reference code is zeros ("neutral")
    assert torch.equal(fill.expression_codes, torch.zeros(FRAMES, 128))
    assert torch.equal(fill.mesh_pose.head_rotation, torch.zeros(FRAMES, 3))
    assert torch.allclose(fill.reference_camera.c2w,
                          default_reference_camera(SIZE, SIZE).c2w)


def test_driving_pose_without_parameters_drops_the_pose_condition():
    codes_only = ControlTrack(expression_codes=torch.randn(FRAMES, 128))
    conditions = conditions_for("driving", control_track=codes_only)
    assert not conditions.normal_latents.any()  # the null pose condition of training


def test_given_normal_maps_are_the_pose_condition():
    maps = torch.rand(FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    conditions = conditions_for("driving", control_track=driving_track(), normal_maps=maps)
    expected = tiny_vae().encode((maps * 2 - 1).permute(1, 0, 2, 3)[None])
    assert torch.allclose(conditions.normal_latents, expected, atol=1e-5)


def test_camera_only_can_follow_a_tracks_own_cameras_at_the_output_size():
    cameras = make_trajectory("arc", frames=FRAMES, degrees=20, width=64, height=48)
    track = driving_track(cameras=cameras)
    pipe = tiny_pipeline()
    request = pipe.check_inputs(reference_image(), mode="camera_only", control_track=track)
    fill = pipe.plan(request)
    assert (fill.cameras.width, fill.cameras.height) == (SIZE, SIZE)
    assert torch.allclose(fill.cameras.c2w, cameras.c2w)
    assert torch.allclose(fill.cameras.K, cameras.resize(SIZE, SIZE).K)


def test_smplx_mesh_source_maps_the_track_layout(tmp_path):
    from factorportrait.body import SMPLXBody, write_synthetic_smplx_model
    from factorportrait.inference import SMPLXMeshSource

    body = SMPLXBody(write_synthetic_smplx_model(tmp_path, seed=0).parent)
    g = torch.Generator().manual_seed(0)
    track = ControlTrack(head_rotation=torch.randn(2, 3, generator=g) * 0.2,
                         head_translation=torch.randn(2, 3, generator=g) * 0.05,
                         body_pose=torch.randn(2, 66, generator=g) * 0.1,
                         expression=torch.randn(2, 4, generator=g))
    betas = torch.randn(10, generator=g) * 0.5
    verts = SMPLXMeshSource(body, betas).vertices(track)
    expression = torch.zeros(2, body.num_expression)
    expression[:, :4] = track.expression
    expected = body(global_orient=track.head_rotation, body_pose=track.body_pose[:, :63],
                    jaw_pose=track.body_pose[:, 63:], betas=betas[None], expression=expression,
                    transl=track.head_translation).vertices
    assert verts.shape == (2, body.num_vertices, 3)
    assert torch.equal(verts, expected)


def test_normal_maps_from_a_video_file(tmp_path):
    from factorportrait.io.video import write_video

    pixels = torch.randint(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    write_video(tmp_path / "normals.mp4", pixels, fps=25, lossless=True)
    conditions = conditions_for("pose_only", control_track=driving_track(),
                                normal_maps=tmp_path / "normals.mp4")
    maps = pixels.permute(0, 3, 1, 2).float() / 255
    expected = tiny_vae().encode((maps * 2 - 1).permute(1, 0, 2, 3)[None])
    assert torch.allclose(conditions.normal_latents, expected, atol=1e-5)
