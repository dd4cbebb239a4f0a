"""Motion metrics of cross- and disentangled reenactment (DeX-Portrait §4 "Metrics"): APD, the
average pose distance, and AED, the average expression distance, "computed using MediaPipe".

The papers do not spell out the formulas; these are ours, stated here:

- **APD**: the mean absolute difference of head yaw, pitch and roll (**radians**) between each
  generated frame and its driving frame, from the tracked head pose (:mod:`~factorportrait.
  tracking.pose`: POSIT of our canonical face). By default the pose is the *apparent* one,
  relative to the line of sight to the head centre (:func:`apparent_rotation`), so that where
  the head sits in the frame does not count: in the camera frame a face shifted 40 px sideways
  in a 512² photo (40° lens) turns by 2.7° of yaw and one shifted 60 px down by 4.6° of pitch;
  apparent, by at most 0.5°. Angles are the Euler angles of ``R = R_y(yaw) R_x(pitch)
  R_z(roll)`` (the convention the synthetic performances are drawn in), OpenCV camera axes:
  yaw about y (down), pitch about x (right), roll about z (forward); a head turned
  counter-clockwise on screen by θ has roll −θ. DeX-Portrait's Table 1 APDs of 0.1–0.5 are
  errors of 6–30° in radians — plausible for reenactment — and would be implausibly small in
  degrees.
- **AED** (default, landmarks): every frame's 478 landmarks (pixels, MediaPipe's relative depth
  as z, which is in the same scale: on the astronaut photo, scaling z by 0.75 or 1.25 raised
  the rigid fit's residual from 0.083 to 0.150 and 0.103 inter-pupil distances) are carried
  by the least-squares 3D similarity of their :data:`~factorportrait.tracking.canonical.RIGID`
  points onto the canonical face, which removes head pose, position and size; the **offset**
  of each frame from its video's reference (frame 0, or a given reference image) is taken at
  the :data:`EXPRESSION_POINTS`; AED is the mean over frames of the mean L2 (3D) distance
  between generated and driving offsets, in units of the canonical face's inter-pupil
  distance (5.32 cm). For cross-reenactment the generated
  video's reference is the source portrait and the driving video's its first frame, so the
  identities' different neutral shapes cancel.
- **AED** (blendshapes, :class:`FaceBlendshapes`): the mean L1 distance between MediaPipe
  FaceLandmarker's blendshape scores (51, ``_neutral`` left out) of the two frames, from a
  ``face_landmarker.task`` file the caller names.

Functions take :class:`~factorportrait.tracking.FaceTrack` s (track a video once, reuse it for
both metrics) or ``uint8 (F, H, W, 3)`` frames, tracked here without smoothing (a metric
measures each frame as it is) and refused when a frame has no face.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from factorportrait.evaluation.identity import similarity_transform
from factorportrait.evaluation.networks import MissingWeightsError, PathLike
from factorportrait.geometry.rotations import axis_angle_to_matrix
from factorportrait.tracking import FaceTrack, FaceTracker, NoFaceError, Smoothing, TrackerConfig
from factorportrait.tracking.canonical import LEFT_PUPIL, RIGHT_PUPIL, RIGID, canonical_face

# MediaPipe face-mesh topology (mp.solutions.face_mesh_connections): the points of
# FACEMESH_LIPS (40), FACEMESH_RIGHT_EYE / LEFT_EYE (16 each) less the four eye corners, which
# are RIGID (fitted, so they carry no expression), and FACEMESH_RIGHT_EYEBROW / LEFT_EYEBROW
# (10 each): the points expressions move. Left out: the irises (gaze, not expression), the
# face contour and cheeks (mostly head shape and fit noise), the RIGID nose and eye corners.
LIPS = (0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185,
        191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405,
        409, 415)
RIGHT_EYE_LIDS = (7, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246)
LEFT_EYE_LIDS = (249, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466)
RIGHT_BROW = (46, 52, 53, 55, 63, 65, 66, 70, 105, 107)
LEFT_BROW = (276, 282, 283, 285, 293, 295, 296, 300, 334, 336)
EXPRESSION_POINTS = LIPS + RIGHT_EYE_LIDS + LEFT_EYE_LIDS + RIGHT_BROW + LEFT_BROW  # 88

FACE_LANDMARKER_FILE = "face_landmarker.task"
FACE_LANDMARKER_URL = ("https://storage.googleapis.com/mediapipe-models/face_landmarker/"
                       "face_landmarker/float16/1/face_landmarker.task")
NEUTRAL = "_neutral"
NUM_BLENDSHAPES = 52  # MediaPipe's output, _neutral first


@dataclass(frozen=True)
class PoseDistance:
    """APD: ``value`` (radians, the mean over frames and angles), ``per_angle (3,)`` yaw,
    pitch, roll means, ``per_frame (F, 3)`` absolute differences."""

    value: float
    per_angle: Tensor
    per_frame: Tensor


@dataclass(frozen=True)
class ExpressionDistance:
    """AED: ``value`` (the mean over frames) and ``per_frame (F,)``."""

    value: float
    per_frame: Tensor


def metric_tracker() -> FaceTracker:
    """A tracker for metrics: MediaPipe without smoothing (each frame measured as it is)."""
    return FaceTracker(TrackerConfig(smoothing=Smoothing.off()))


def track_frames(frames: Tensor, tracker: FaceTracker | None = None, *, name: str = "frames"
                 ) -> FaceTrack:
    """Track ``uint8 (F, H, W, 3)`` frames with ``tracker`` (:func:`metric_tracker` when None);
    ``NoFaceError`` naming ``name`` and the frames when any frame has no face."""
    own = tracker is None
    tracker = metric_tracker() if own else tracker
    try:
        track = tracker.track(torch.as_tensor(frames), name=name)
    finally:
        if own:
            tracker.close()
    missing = (~track.detected).nonzero().flatten().tolist()
    if missing:
        raise NoFaceError(f"{name}: no face in frame(s) {', '.join(map(str, missing[:8]))}"
                          f"{', …' if len(missing) > 8 else ''} of {len(track)}")
    return track


def _as_track(video: FaceTrack | Tensor, tracker: FaceTracker | None, name: str) -> FaceTrack:
    return video if isinstance(video, FaceTrack) else track_frames(video, tracker, name=name)


def yaw_pitch_roll(rotation: Tensor) -> Tensor:
    """``(..., 3)`` radians of ``rotation (..., 3, 3) = R_y(yaw) R_x(pitch) R_z(roll)``."""
    rotation = rotation.double()
    pitch = torch.asin((-rotation[..., 1, 2]).clamp(-1.0, 1.0))
    yaw = torch.atan2(rotation[..., 0, 2], rotation[..., 2, 2])
    roll = torch.atan2(rotation[..., 1, 0], rotation[..., 1, 1])
    return torch.stack([yaw, pitch, roll], -1)


def apparent_rotation(rotation: Tensor, center: Tensor, K: Tensor) -> Tensor:
    """Head rotations ``(F, 3, 3)`` (camera frame) relative to the line of sight to the head
    centre at ``center (F, 2)`` pixels through ``K (3, 3)``: ``R_sightᵀ R``, with ``R_sight``
    the smallest rotation carrying the optical axis onto that line."""
    K = K.double()
    center = center.double()
    ray = torch.stack([(center[:, 0] - K[0, 2]) / K[0, 0], (center[:, 1] - K[1, 2]) / K[1, 1],
                       torch.ones_like(center[:, 0])], -1)
    ray = ray / ray.norm(dim=-1, keepdim=True)
    axis = torch.linalg.cross(ray.new_tensor([0.0, 0.0, 1.0]).expand_as(ray), ray)
    sine = axis.norm(dim=-1, keepdim=True)
    angle = torch.atan2(sine, ray[:, 2:])
    sight = axis_angle_to_matrix(axis / sine.clamp_min(1e-12) * angle)
    return sight.transpose(-1, -2) @ rotation.double()


def head_angles(track: FaceTrack, apparent: bool = True) -> Tensor:
    """Yaw, pitch, roll ``(F, 3)`` radians of a track's head: apparent
    (:func:`apparent_rotation`) or in the camera frame."""
    rotation = track.pose.rotation
    if apparent:
        rotation = apparent_rotation(rotation, track.pose.center, track.K)
    return yaw_pitch_roll(rotation)


def pose_distance(generated: Tensor, driving: Tensor) -> PoseDistance:
    """APD of head angles ``(F, 3)`` (yaw, pitch, roll radians): |Δ| wrapped to [0, π]."""
    if generated.shape != driving.shape or generated.ndim != 2 or generated.shape[1] != 3:
        raise ValueError(f"APD: generated {tuple(generated.shape)} and driving "
                         f"{tuple(driving.shape)} angles must both be (F, 3)")
    difference = generated.double() - driving.double()
    per_frame = torch.remainder(difference + torch.pi, 2 * torch.pi).sub(torch.pi).abs().float()
    return PoseDistance(float(per_frame.mean()), per_frame.mean(0), per_frame)


def apd(generated: FaceTrack | Tensor, driving: FaceTrack | Tensor,
        tracker: FaceTracker | None = None, *, apparent: bool = True) -> PoseDistance:
    """APD between a generated video and its driving video (tracks, or ``uint8 (F, H, W,
    3)`` frames tracked here), frame by frame; ``apparent=False`` compares camera-frame
    angles (module docstring)."""
    generated = _as_track(generated, tracker, "generated")
    driving = _as_track(driving, tracker, "driving")
    if len(generated) != len(driving):
        raise ValueError(f"APD: generated has {len(generated)} frames, driving {len(driving)}")
    return pose_distance(head_angles(generated, apparent), head_angles(driving, apparent))


def canonical_landmarks(landmarks: Tensor) -> Tensor:
    """Landmarks ``(..., 478, 3)`` (pixels, MediaPipe depth) carried onto the canonical face by
    the 3D similarity of their RIGID points -> ``(..., 478, 3)`` in canonical inter-pupil
    distances (head pose, position and size removed)."""
    if landmarks.shape[-2:] != (478, 3):
        raise ValueError(f"expected landmarks (..., 478, 3), got {tuple(landmarks.shape)}")
    canonical = canonical_face()
    rigid = list(RIGID)
    target = canonical[rigid].expand(*landmarks.shape[:-2], len(rigid), 3)
    transform = similarity_transform(landmarks[..., rigid, :], target)  # (..., 3, 4)
    moved = landmarks.double() @ transform[..., :3].transpose(-1, -2) + transform[..., None, :, 3]
    return moved / (canonical[LEFT_PUPIL] - canonical[RIGHT_PUPIL]).norm()


def expression_offsets(landmarks: Tensor, reference: Tensor | None = None) -> Tensor:
    """Offsets ``(F, P, 3)`` of the :data:`EXPRESSION_POINTS` of pose-normalised landmarks
    ``(F, 478, 3)`` from ``reference (478, 3)`` (default: frame 0), in canonical inter-pupil
    distances."""
    if landmarks.ndim != 3 or (reference is not None and reference.shape != (478, 3)):
        raise ValueError(f"expected landmarks (F, 478, 3) and a reference (478, 3), got "
                         f"{tuple(landmarks.shape)} and "
                         f"{None if reference is None else tuple(reference.shape)}")
    normalised = canonical_landmarks(landmarks)[..., list(EXPRESSION_POINTS), :]
    base = normalised[0] if reference is None else \
        canonical_landmarks(reference)[list(EXPRESSION_POINTS)]
    return normalised - base


def expression_distance(generated: Tensor, driving: Tensor) -> Tensor:
    """Per frame ``(F,)``: the mean over points of ``|generated − driving|`` (L2) of offsets
    ``(F, P, 3)``."""
    if generated.shape != driving.shape:
        raise ValueError(f"AED: generated {tuple(generated.shape)} and driving "
                         f"{tuple(driving.shape)} offsets differ in shape")
    return (generated - driving).norm(dim=-1).mean(-1).float()


def _reference_landmarks(reference: FaceTrack | Tensor | None, tracker: FaceTracker | None,
                         name: str) -> Tensor | None:
    """``(478, 3)`` landmarks of a reference: a 1-frame track, landmarks or a uint8 image."""
    if reference is None or isinstance(reference, FaceTrack):
        return None if reference is None else reference.landmarks[0]
    reference = torch.as_tensor(reference)
    if reference.dtype == torch.uint8:
        return track_frames(reference[None], tracker, name=name).landmarks[0]
    return reference


def aed(generated: FaceTrack | Tensor, driving: FaceTrack | Tensor,
        tracker: FaceTracker | None = None, *,
        generated_reference: FaceTrack | Tensor | None = None,
        driving_reference: FaceTrack | Tensor | None = None) -> ExpressionDistance:
    """AED from pose-normalised landmark offsets (module docstring) between a generated video
    and its driving video (tracks or ``uint8 (F, H, W, 3)`` frames). Each video's offsets are
    from its reference — a 1-frame track, ``(478, 3)`` landmarks or a ``uint8 (H, W, 3)``
    image; default its frame 0. Cross-reenactment: ``generated_reference`` = the source
    portrait."""
    generated_track = _as_track(generated, tracker, "generated")
    driving_track = _as_track(driving, tracker, "driving")
    if len(generated_track) != len(driving_track):
        raise ValueError(f"AED: generated has {len(generated_track)} frames, driving "
                         f"{len(driving_track)}")
    offsets = [expression_offsets(track.landmarks,
                                  _reference_landmarks(reference, tracker, f"{name} reference"))
               for track, reference, name in
               ((generated_track, generated_reference, "generated"),
                (driving_track, driving_reference, "driving"))]
    per_frame = expression_distance(*offsets)
    return ExpressionDistance(float(per_frame.mean()), per_frame)


def blendshape_distance(generated: Tensor, driving: Tensor) -> Tensor:
    """Per frame ``(F,)``: the mean L1 distance of blendshape scores ``(F, 51)``, or ``(F,
    52)`` in MediaPipe's order whose first column (``_neutral``) is dropped."""
    if generated.shape != driving.shape or generated.ndim != 2 or \
            generated.shape[1] not in (NUM_BLENDSHAPES - 1, NUM_BLENDSHAPES):
        raise ValueError(f"AED: expected blendshape scores (F, 51) or (F, 52) of one shape, got "
                         f"generated {tuple(generated.shape)} and driving "
                         f"{tuple(driving.shape)}")
    if generated.shape[1] == NUM_BLENDSHAPES:
        generated, driving = generated[:, 1:], driving[:, 1:]
    return (generated.double() - driving.double()).abs().mean(-1).float()


def face_landmarker_file(path: PathLike | None = None) -> Path:
    """The FaceLandmarker bundle: ``path`` (it must exist), else
    ``~/.cache/factorportrait/metrics/face_landmarker.task``; ``MissingWeightsError`` (one
    line) when missing."""
    default = Path.home() / ".cache" / "factorportrait" / "metrics" / FACE_LANDMARKER_FILE
    candidate = Path(path) if path is not None else default
    if candidate.is_file():
        return candidate
    named = f"model file {candidate}" if path is not None else \
        f"model file {FACE_LANDMARKER_FILE} (pass --face-landmarker PATH)"
    raise MissingWeightsError(f"AED blendshapes network (MediaPipe FaceLandmarker): {named} "
                              f"not found; it is published at {FACE_LANDMARKER_URL}")


class FaceBlendshapes:
    """MediaPipe Tasks' FaceLandmarker with blendshapes, from a ``face_landmarker.task``
    bundle: :func:`load_face_blendshapes`, then call on frames; :meth:`close` (or ``with``)
    releases it."""

    def __init__(self, landmarker: Any) -> None:
        self.landmarker = landmarker

    def close(self) -> None:
        self.landmarker.close()

    def __enter__(self) -> FaceBlendshapes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, frames: Tensor, name: str = "frames") -> Tensor:
        """Scores ``(F, 51)`` (MediaPipe's order, ``_neutral`` dropped) of ``uint8 (F, H, W,
        3)`` frames; ``NoFaceError`` naming ``name`` and the frame when one has no face."""
        import mediapipe as mp

        rows = []
        for index, frame in enumerate(torch.as_tensor(frames).numpy()):
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
            result = self.landmarker.detect(image)
            if not result.face_blendshapes:
                raise NoFaceError(f"{name}: no face in frame {index}")
            rows.append([c.score for c in result.face_blendshapes[0] if c.category_name
                         != NEUTRAL])
        return torch.tensor(rows, dtype=torch.float32)


def load_face_blendshapes(path: PathLike | None = None) -> FaceBlendshapes:
    """MediaPipe FaceLandmarker with blendshapes from ``face_landmarker.task`` at ``path`` or the
    default location (:func:`face_landmarker_file`)."""
    file = face_landmarker_file(path)
    from factorportrait.tracking.landmarks import _quiet_stderr, import_mediapipe

    mp = import_mediapipe()
    vision = mp.tasks.vision
    options = vision.FaceLandmarkerOptions(
        base_options=mp.tasks.BaseOptions(model_asset_path=str(file)),
        running_mode=vision.RunningMode.IMAGE, num_faces=1,
        output_face_blendshapes=True)
    with _quiet_stderr():
        return FaceBlendshapes(vision.FaceLandmarker.create_from_options(options))


def aed_blendshapes(generated: Tensor, driving: Tensor, model: FaceBlendshapes
                    ) -> ExpressionDistance:
    """AED from blendshape scores of generated and driving ``uint8 (F, H, W, 3)`` frames
    (absolute scores, frame by frame: blendshapes are already identity-free)."""
    per_frame = blendshape_distance(model(generated, "generated"), model(driving, "driving"))
    return ExpressionDistance(float(per_frame.mean()), per_frame)
