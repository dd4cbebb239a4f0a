"""Step 2 of the pipeline: faces — the reference portrait crop and the tracked driving video
(docs/tracking.md).

- :func:`portrait_reference`: the photo's face is tracked and cut out at the output size,
  framed like the training clips (:meth:`~factorportrait.tracking.FaceTrack.portrait_boxes`);
  its head pose is fitted in the reference camera, the procedural avatar is placed and scaled
  so that its face points project onto the photo's (:func:`fit_avatar`: the mesh of the pose
  condition), and its expression code is taken from the roll-normalised face crop.
- :func:`transfer_motion`: head motion tracked in a driving video's own camera
  (``world="camera"``) is carried onto the reference's head relative to the video's first
  frame — rotations composed, translations scaled by the two heads' depth ratio.
- :func:`crop_box_of_center_crop`: the box of the plain centre crop, so any render can be
  pasted back (:func:`~factorportrait.tracking.crop.paste_back`).

The world is docs/cameras.md's: the reference camera is the default frontal camera (0.6 m in
front of the origin, 40° lens) and a tracked reference's head centre is put at that depth —
one image cannot tell a small near head from a large far one, so the scene is scaled to it —
and trajectory presets therefore orbit the head.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from factorportrait.body import AvatarIdentity, HeadAvatar
from factorportrait.expression.crop import avatar_face_points
from factorportrait.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from factorportrait.geometry.trajectories import DEFAULT_DISTANCE
from factorportrait.inference.control_track import ControlTrack
from factorportrait.expression.codes import EncoderCodeSource
from factorportrait.inference.controls import MODE_FACTORS, default_reference_camera
from factorportrait.inference.mesh_sources import HeadMeshSource
from factorportrait.tracking.canonical import face_points
from factorportrait.tracking.crop import FaceBoxes, crop_faces
from factorportrait.tracking.pose import fit_head_pose
from factorportrait.tracking.tracker import FaceTrack, FaceTracker
from factorportrait.tracking.video import load_video, needs_landmarks, tracked_codes

LOGGER = logging.getLogger(__name__)
CHUNK = 32  # frames per pose-encoder call (float copies of a long video stay small)

@dataclass(frozen=True, eq=False)
class ReferenceFace:
    """A photographed reference, cropped and fitted.

    Attributes:
        image: ``(3, H, W)`` float32 in [-1, 1], the portrait crop at the output size.
        box: the crop's :class:`FaceBoxes` (1 box, photo pixels; roll 0).
        face: the photo's :class:`FaceTrack` (photo pixels).
        reference: 1-frame track: the default reference camera, the head's rotation and
            centre in the world (module docstring), the expression code when an encoder was
            given.
        mesh_source: the fitted avatar (:class:`HeadMeshSource`).
    """

    image: Tensor
    box: FaceBoxes
    face: FaceTrack
    reference: ControlTrack
    mesh_source: HeadMeshSource


def fit_avatar(avatar: HeadAvatar, points: Tensor, rotation: Tensor, K: Tensor, depth: float
               ) -> tuple[float, Tensor]:
    """Scale and place ``avatar`` so its five face points (pupils, nose tip, mouth, chin),
    turned by ``rotation (3, 3)`` (camera frame), project onto ``points (5, 2)`` pixels through
    ``K (3, 3)``, its head centre at ``depth`` metres -> ``(scale, centre (3,))``.

    With the depth fixed the perspective projection is linear in ``(scale, x, y)``:
    ``(u − cx)(scale·p_z + z) = fx (scale·p_x + x)`` for ``p = R q`` and its ``v`` twin; the
    ten equations are solved by least squares."""
    zero = torch.zeros(1, 3)
    q = avatar_face_points(avatar, zero, zero)[0].double()  # (5, 3) head frame (rest origin)
    p = q @ rotation.double().T  # (5, 3)
    K, points = K.double(), points.double()
    rows, rhs = [], []
    for axis in (0, 1):
        offset = points[:, axis] - K[axis, 2]  # (5,)
        focal = K[axis, axis]
        coefficient = offset * p[:, 2] - focal * p[:, axis]  # times scale
        other = torch.zeros(5, 2, dtype=torch.float64)
        other[:, axis] = -focal  # times x (axis 0) or y (axis 1)
        rows.append(torch.cat([coefficient[:, None], other], 1))
        rhs.append(-offset * depth)
    solution = torch.linalg.lstsq(torch.cat(rows), torch.cat(rhs)[:, None]).solution[:, 0]
    scale = float(solution[0])
    if not scale > 0:
        raise ValueError(f"fit_avatar: the face points give a non-positive scale {scale:.3g}")
    return scale, torch.tensor([float(solution[1]), float(solution[2]), depth], dtype=torch.float64)


def portrait_reference(photo: Tensor, height: int, width: int, tracker: FaceTracker, *,
                       encoder=None, avatar: HeadAvatar | None = None,
                       name: str = "reference_image") -> ReferenceFace:
    """Crop, track and fit a reference photo ``uint8 (H0, W0, 3)`` for an ``height × width``
    render (module docstring). ``NoFaceError`` / ``ValueError`` name ``name``."""
    face = tracker.track_image(photo, name=name)
    box = face.portrait_boxes(width / height)
    pixels = photo.permute(2, 0, 1)[None].float()
    crop = crop_faces(pixels, box, (height, width), mode="bicubic")[0].clamp(0, 255)
    image = crop / 127.5 - 1  # (3, H, W)
    zoom = height / float(box.side[0])
    landmarks = face.landmarks.clone()  # (1, 478, 3) photo pixels -> crop pixels
    landmarks[..., :2] = (landmarks[..., :2] - box.center) * zoom + torch.tensor(
        [width / 2, height / 2])
    landmarks[..., 2] = landmarks[..., 2] * zoom
    camera = default_reference_camera(height, width)
    K = camera.K[0]
    pose, _ = fit_head_pose(landmarks, K)
    avatar = avatar if avatar is not None else HeadAvatar(AvatarIdentity())
    scale, centre = fit_avatar(avatar, face_points(landmarks)[0, :, :2], pose.rotation[0], K,
                               DEFAULT_DISTANCE)
    c2w = camera.c2w[0].double()
    rotation = c2w[:3, :3] @ pose.rotation[0].double()
    codes = None
    if encoder is not None:
        codes = tracked_codes(encoder, photo[None], face.boxes, landmarks=face.landmarks)
    reference = ControlTrack(
        cameras=camera, head_rotation=matrix_to_axis_angle(rotation)[None].float(),
        head_translation=(c2w[:3, :3] @ centre + c2w[:3, 3])[None].float(),
        expression_codes=codes, source=f"tracked: {name}")
    return ReferenceFace(image, box, face, reference, HeadMeshSource(avatar, scale))


def transfer_motion(driving: ControlTrack, reference: ControlTrack) -> ControlTrack:
    """``driving`` (``world="camera"``: poses in its filming camera's frame) -> the same
    performance on the reference's head, in the reference's world (``world="scene"``):

        R_i = R_ref · (R_d,i R_d,0ᵀ)  and  T_i = T_ref + (z_ref / z_d,0) (T_d,i − T_d,0)

    in the reference camera's frame (``z`` = depth of the head centre), so the head turns and
    moves as the driving head did from its first frame. ``reference`` is a 1-frame track with
    the reference camera (its pose defaults to the rest pose). The driving cameras (the static
    video camera) are dropped: cameras come from the render's mode."""
    if driving.world != "camera" or driving.head_rotation is None \
            or driving.head_translation is None:
        raise ValueError("transfer_motion: expected a tracked track (world 'camera') with "
                         "head_rotation and head_translation")
    world_to_camera = reference.cameras.world_to_camera()[0].double()  # (4, 4)
    c2w = reference.cameras.c2w[0].double()
    ref_r = torch.eye(3, dtype=torch.float64) if reference.head_rotation is None else \
        axis_angle_to_matrix(reference.head_rotation[0].double())
    ref_t = torch.zeros(3, dtype=torch.float64) if reference.head_translation is None else \
        reference.head_translation[0].double()
    ref_r = world_to_camera[:3, :3] @ ref_r  # reference head in its camera's frame
    ref_t = world_to_camera[:3, :3] @ ref_t + world_to_camera[:3, 3]
    rot = axis_angle_to_matrix(driving.head_rotation.double())  # (F, 3, 3)
    trans = driving.head_translation.double()  # (F, 3)
    turned = (rot @ rot[0].T) @ ref_r  # (F, 3, 3)
    moved = ref_t + (ref_t[2] / trans[0, 2]) * (trans - trans[0])  # (F, 3)
    world_r = c2w[:3, :3] @ turned
    world_t = moved @ c2w[:3, :3].T + c2w[:3, 3]
    return driving.replace(head_rotation=matrix_to_axis_angle(world_r).float(),
                           head_translation=world_t.float(), cameras=None, world="scene")


def crop_box_of_center_crop(photo_height: int, photo_width: int, height: int, width: int
                            ) -> FaceBoxes:
    """The box :func:`~factorportrait.inference.inputs.load_reference_image`'s centre crop
    (to ``height / width``, then resized) cuts from a ``photo_height × photo_width`` photo."""
    aspect = height / width
    if photo_height / photo_width > aspect:
        side = max(1, round(photo_width * aspect))
        top, left, crop_w = (photo_height - side) // 2, 0, photo_width
    else:
        crop_w = max(1, round(photo_height / aspect))
        top, left, side = 0, (photo_width - crop_w) // 2, photo_height
    center = torch.tensor([[left + crop_w / 2, top + side / 2]])
    return FaceBoxes(center, torch.tensor([float(side)]), torch.zeros(1))


def resolve_faces(request, tracker: FaceTracker, encoder=None, mesh_source=None, *,
                  pose_encoder=None, progress: bool = False):
    """Step 2 on a checked :class:`~factorportrait.inference.inputs.RenderRequest`, in place
    (idempotent): the reference's portrait crop, its tracked pose and fitted avatar (when
    ``request.reference_crop == "face"``), and the tracked driving video's codes and head
    motion (when ``request.driving_video`` is set). ``mesh_source``: the pipeline's own; an
    avatar one lends its identity to the fitted avatar. ``pose_encoder``: a source of RTS
    poses from tracked frames (:class:`~factorportrait.motion.sources.MotionPoseSource`)
    that replaces the tracker's head pose of the driving video (:func:`encoded_motion`).
    Returns ``request``."""
    if request.faces_done:
        return request
    needs_face = request.driving_video is not None and MODE_FACTORS[request.mode].pose == \
        "driving"
    photo_h, photo_w = request.photo.shape[:2]
    request.crop_box = crop_box_of_center_crop(photo_h, photo_w, request.height, request.width)
    if request.reference_crop == "face":
        avatar = getattr(mesh_source, "avatar", None)
        try:
            face = portrait_reference(request.photo, request.height, request.width, tracker,
                                      encoder=encoder if isinstance(encoder, EncoderCodeSource)
                                      or needs_landmarks(encoder) else None, avatar=avatar)
        except ValueError as err:  # NoFaceError, a face too small
            if needs_face:
                raise ValueError(f"{err}; driving the head from a video needs the reference's "
                                 "face (or give a reference track and a mesh source)") from err
            LOGGER.info("%s: using the centre crop", err)
        else:
            request.reference_image, request.crop_box = face.image, face.box
            codes = face.reference.expression_codes
            if request.reference.expression_codes is not None:
                codes = request.reference.expression_codes
            request.reference = face.reference.replace(
                expression=request.reference.expression, expression_codes=codes,
                expression_names=request.reference.expression_names)
            if mesh_source is not None and avatar is None:
                raise ValueError(f"reference_image: a {type(mesh_source).__name__} cannot be "
                                 "fitted to a photographed face (only the procedural avatar "
                                 "is): give no mesh source (the fitted avatar), an "
                                 "AvatarMeshSource, or reference_crop='center' with a "
                                 "reference track in the mesh's world")
            request.mesh_source = face.mesh_source
    if request.driving_video is not None:
        request.driving = _driving_from_video(request, tracker, encoder, progress,
                                              pose_encoder)
        request.driving_video = None
    for name in ("driving", "pose_source", "expression_source"):  # tracked files
        track = getattr(request, name)
        if track is not None and track.world == "camera" and track.head_rotation is not None \
                and track.head_translation is not None:
            setattr(request, name, transfer_motion(track, request.reference))
    request.faces_done = True
    return request


def encoded_motion(face: FaceTrack, frames: Tensor, pose_encoder) -> ControlTrack:
    """The head pose of tracked ``frames`` (``uint8 (F, H, W, 3)``) read by ``pose_encoder``
    (``(frames, landmarks) -> RTS (F, 3, 4)``) instead of the tracker's fit: the RTS become
    3D poses in the video camera's frame (:func:`~factorportrait.geometry.head_pose.
    head_poses_from_matrices` with the tracker's intrinsics), a ``world="camera"`` track like
    :meth:`FaceTrack.to_control_track`'s."""
    from factorportrait.geometry.head_pose import head_poses_from_matrices

    poses = torch.cat([pose_encoder(frames[start:start + CHUNK].permute(0, 3, 1, 2).float()
                                    / 127.5 - 1, face.landmarks[start:start + CHUNK])
                       for start in range(0, len(frames), CHUNK)])
    rotation, translation = head_poses_from_matrices(poses, face.cameras())
    return face.to_control_track().replace(head_rotation=rotation, head_translation=translation,
                                           source=f"pose encoder: {face.report.source}")


def _driving_from_video(request, tracker: FaceTracker, encoder, progress: bool,
                        pose_encoder=None) -> ControlTrack:
    """The driving track completed from the video: codes (if missing) from the encoder, head
    motion (if missing) tracked — or read by ``pose_encoder`` — and transferred onto the
    reference."""
    factors = MODE_FACTORS[request.mode]
    driving = request.driving
    wants_pose = factors.pose == "driving" and (driving is None or not driving.has_pose)
    wants_codes = factors.expression == "driving" and (
        driving is None or driving.expression_codes is None)
    video = request.driving_video
    if isinstance(video, (str, os.PathLike)):
        loaded = load_video(video, request.num_frames, "driving_video")
        frames, label = loaded.frames, f"driving_video {os.fspath(video)}"
    else:
        frames, label = torch.as_tensor(video)[:request.num_frames], "driving_video"
    if len(frames) < request.num_frames:
        raise ValueError(f"{label} has {len(frames)} frames at a constant rate, fewer than "
                         f"num_frames={request.num_frames}")
    track = wants_pose or isinstance(encoder, EncoderCodeSource) or needs_landmarks(encoder)
    face = tracker.track(frames, request.fps, name=label, progress=progress) if track else None
    changes = {}
    if wants_codes:
        boxes = face.boxes if face is not None else None
        changes["expression_codes"] = tracked_codes(
            encoder, frames, boxes, landmarks=None if face is None else face.landmarks)
    if wants_pose:
        motion = face.to_control_track() if pose_encoder is None else encoded_motion(
            face, frames, pose_encoder)
        moved = transfer_motion(motion, request.reference)
        changes.update(head_rotation=moved.head_rotation,
                       head_translation=moved.head_translation)
    if driving is None:
        return ControlTrack(fps=request.fps, source=label, **changes)
    if wants_pose and driving.world == "camera":  # now all in the reference's world
        changes.update(cameras=None, world="scene")
    return driving.replace(**changes)
