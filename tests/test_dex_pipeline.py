"""DeX conditions through the pipeline: head poses from the plan (reference + driving, each seen
by its camera), landmarks from the track or the avatar mesh source, one-line refusals when a
checkpoint needs an input the render cannot give, and a full render of each variant."""

import pytest
import torch

from factorportrait import DiTConfig, FactorPortraitDiT
from factorportrait.geometry.cameras import Cameras
from factorportrait.geometry.head_pose import head_pose_matrices
from factorportrait.pipeline import FactorPortraitPipeline
from tests.pipeline_helpers import (FRAMES, SIZE, driving_track, mesh_source, reference_image,
                                    tiny_vae)
from tests.test_pipeline_modes import reference_track, trajectory


def dex_pipeline(mesh=True, **config):
    torch.manual_seed(0)
    model = FactorPortraitDiT(DiTConfig.tiny(**config)).eval()
    with torch.no_grad():
        for parameter in model.condition_parameters():
            parameter.normal_(std=0.05)
    return FactorPortraitPipeline(model, tiny_vae(), mesh_source=mesh_source() if mesh else None)


def conditions_for(pipe, mode, **inputs):
    request = pipe.check_inputs(reference_image(), mode=mode, reference=reference_track(),
                                **inputs)
    return pipe.encode_conditions(request, pipe.plan(request))


def test_driving_head_pose_is_the_reference_then_the_driving_frames():
    pipe = dex_pipeline(head_pose_rays=True, reference_warp_blocks=(0,))
    track = driving_track()
    conditions = conditions_for(pipe, "driving", control_track=track)
    reference = reference_track()
    cameras = reference.cameras
    expected = head_pose_matrices(
        torch.cat([reference.head_rotation, track.head_rotation]),
        torch.cat([reference.head_translation, track.head_translation]),
        Cameras.cat([cameras, cameras[torch.zeros(FRAMES, dtype=torch.long)]]))
    assert conditions.head_pose.shape == (1, 1 + FRAMES, 3, 4)
    assert torch.allclose(conditions.head_pose[0], expected, atol=1e-6)


def test_expression_only_holds_the_reference_head_pose():
    pipe = dex_pipeline(head_pose_rays=True)
    conditions = conditions_for(pipe, "expression_only",
                                control_track=driving_track().replace(expression=None))
    poses = conditions.head_pose[0]
    assert torch.allclose(poses, poses[:1].expand_as(poses), atol=1e-6)


def test_landmark_model_takes_landmarks_from_the_avatar_mesh_source():
    pipe = dex_pipeline(expression_condition="landmarks", expression_injection="cross_attention")
    track = driving_track()
    conditions = conditions_for(pipe, "driving", control_track=track)
    landmarks = conditions.landmarks
    assert landmarks.shape == (1, FRAMES, 478, 2)
    assert landmarks.abs().max() <= 1 and landmarks[0].std(0).max() > 0  # the face moves
    given = torch.rand(FRAMES, 478, 2) * 2 - 1  # a track's own landmarks take precedence
    conditions = conditions_for(pipe, "driving", control_track=track.replace(landmarks=given))
    assert torch.equal(conditions.landmarks[0], given)


def test_landmark_model_without_a_landmark_source_is_one_line():
    pipe = dex_pipeline(mesh=False, expression_condition="landmarks",
                        expression_injection="cross_attention")
    with pytest.raises(ValueError, match="has no landmarks, but the DiT's expression condition "
                                         "is landmarks") as error:
        conditions_for(pipe, "driving", control_track=driving_track())
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("config", [
    dict(head_pose_rays=True, reference_warp_blocks=(1,), expression_injection="cross_attention"),
    dict(expression_condition="landmarks", expression_injection="cross_attention",
         landmark_points=478),
], ids=["dex", "c3_landmarks"])
def test_each_variant_renders_frames(config):
    pipe = dex_pipeline(**config)
    video = pipe(reference_image(), mode="driving_with_camera", control_track=driving_track(),
                 camera_trajectory=trajectory(), num_frames=FRAMES, num_steps=2,
                 height=SIZE, width=SIZE, progress=False)
    assert video.shape == (FRAMES, SIZE, SIZE, 3) and video.dtype == torch.uint8
