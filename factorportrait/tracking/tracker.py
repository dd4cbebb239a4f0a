"""Face tracking of a video or a photo -> :class:`FaceTrack` (landmarks, head pose, crop boxes).

Per frame (:class:`~factorportrait.tracking.landmarks.MediaPipeFaces`): detect faces, choose
one — the largest in the first frame with a face, then the one nearest the previous choice
(so a second person walking by does not take over) — and find its 478 landmarks. Then, over
the whole video:

1. frames without the face are filled by linear interpolation of the landmarks (held at the
   ends); they are counted in the report, as are frames with other faces;
2. landmarks are smoothed (One-Euro, forwards and backwards: :mod:`.smoothing`), in units of
   the face-box side so the parameters do not depend on resolution;
3. the head pose is fitted (:mod:`.pose`) and smoothed (quaternion, log-scale, centre);
4. the expression crop boxes are derived from the smoothed pose — the canonical face's pupils
   and mouth moved by it, exactly as :func:`~factorportrait.expression.crop.face_boxes` does for
   synthetic clips, so they follow the head and not the jaw — and smoothed once more.

Cameras: the video camera is the world (c2w = identity), ``K`` from a horizontal field of view
(``TrackerConfig.fov_deg``, default :data:`~factorportrait.geometry.DEFAULT_FOV_DEG`, the
library's default lens) unless ``K`` is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from factorportrait.geometry import Cameras, intrinsics_from_fov
from factorportrait.geometry.trajectories import DEFAULT_FOV_DEG
from factorportrait.tracking.canonical import face_points
from factorportrait.tracking.crop import FaceBoxes
from factorportrait.tracking.landmarks import Detection, MediaPipeFaces
from factorportrait.tracking.pose import HeadPose, fit_head_pose
from factorportrait.tracking.smoothing import Smoothing, fill_missing, one_euro, \
    quaternion_continuity

FACE_BOX_M = 0.15  # the expression crop's side in metres at the face (expression.crop)
PORTRAIT_FACE_FRACTION = 0.5  # face box side / portrait crop height: the phone clips' framing
PORTRAIT_FACE_Y = 0.48  # face box centre, in crop heights from the top (phone clips: 0.48)


class NoFaceError(ValueError):
    """No face in a video or image (a ``ValueError``: bad input)."""


@dataclass(frozen=True)
class TrackerConfig:
    """Settings of :class:`FaceTracker`.

    Attributes:
        fov_deg: horizontal field of view of the video camera for the default intrinsics.
        min_face_px: smallest median expression-box side (pixels) accepted; smaller faces
            are refused (their landmarks are too coarse to drive anything).
        detection_confidence: BlazeFace's minimum score.
        smoothing: the One-Euro filters (:class:`~factorportrait.tracking.smoothing.Smoothing`).
    """

    fov_deg: float = DEFAULT_FOV_DEG
    min_face_px: float = 48.0
    detection_confidence: float = 0.5
    smoothing: Smoothing = field(default_factory=Smoothing)

    def __post_init__(self) -> None:
        if not 0 < self.fov_deg < 180:
            raise ValueError(f"TrackerConfig.fov_deg must be in (0, 180), got {self.fov_deg}")
        if not self.min_face_px > 0:
            raise ValueError(f"TrackerConfig.min_face_px must be > 0, got {self.min_face_px}")


@dataclass(frozen=True)
class TrackingReport:
    """What tracking found: frame counts, the filled (untracked) frames, other faces."""

    source: str
    frames: int
    filled: tuple[int, ...]
    frames_with_other_faces: int
    most_faces: int
    face_px: float
    residual_px: float

    def summary(self) -> str:
        parts = [f"{self.source}: face in {self.frames - len(self.filled)} of {self.frames} "
                 f"frames, {self.face_px:.0f} px face box, fit residual "
                 f"{self.residual_px:.2f} px"]
        if self.filled:
            shown = ", ".join(map(str, self.filled[:8])) + (", …" if len(self.filled) > 8
                                                            else "")
            parts.append(f"{len(self.filled)} frames without a face interpolated ({shown})")
        if self.frames_with_other_faces:
            parts.append(f"{self.frames_with_other_faces} frames with other faces (up to "
                         f"{self.most_faces} in a frame; the main one is tracked)")
        return "; ".join(parts)


@dataclass(frozen=True, eq=False)
class FaceTrack:
    """One face tracked over ``F`` frames of ``height × width``.

    Attributes:
        landmarks: ``(F, 478, 3)`` smoothed (and filled) landmarks, frame pixels.
        detected: ``(F,)`` bool, frames where the face was found (the others are filled).
        pose: smoothed :class:`~factorportrait.tracking.pose.HeadPose`.
        boxes: smoothed expression crop boxes (:class:`FaceBoxes`, roll from the pupils).
        K: ``(3, 3)`` intrinsics of the frames.
        fps: frame rate.
        report: :class:`TrackingReport`.
    """

    landmarks: Tensor
    detected: Tensor
    pose: HeadPose
    boxes: FaceBoxes
    K: Tensor
    height: int
    width: int
    fps: float
    report: TrackingReport

    def __len__(self) -> int:
        return self.landmarks.shape[0]

    @property
    def head_rotation(self) -> Tensor:
        """``(F, 3)`` axis-angle radians, camera frame (OpenCV)."""
        return self.pose.head_rotation()

    @property
    def head_translation(self) -> Tensor:
        """``(F, 3)`` metres, camera frame: the head centre (docs/tracking.md)."""
        return self.pose.head_translation(self.K)

    def cameras(self) -> Cameras:
        """``F`` copies of the static video camera: ``K``, c2w = identity (the world)."""
        count = len(self)
        return Cameras(self.K[None].expand(count, 3, 3).clone(),
                       torch.eye(4).expand(count, 4, 4).clone(), self.width, self.height)

    def portrait_boxes(self, aspect: float = 1.0) -> FaceBoxes:
        """Boxes of a portrait crop framed like the training clips (phone framing: the face box
        is :data:`PORTRAIT_FACE_FRACTION` of the crop height, its centre at
        :data:`PORTRAIT_FACE_Y` of it), upright (roll 0); ``aspect`` = width / height of the
        crop the caller takes."""
        side = self.boxes.side / PORTRAIT_FACE_FRACTION
        center = self.boxes.center.clone()
        center[:, 1] = center[:, 1] + (0.5 - PORTRAIT_FACE_Y) * side
        return FaceBoxes(center, side, torch.zeros_like(side))

    def to_control_track(self, expression_codes: Tensor | None = None, source: str = ""):
        """A :class:`~factorportrait.inference.ControlTrack`: head pose, the static camera,
        ``fps``, and ``expression_codes (F, D)`` when given."""
        from factorportrait.inference.control_track import ControlTrack

        return ControlTrack(fps=self.fps, expression_codes=expression_codes,
                            head_rotation=self.head_rotation,
                            head_translation=self.head_translation, cameras=self.cameras(),
                            source=source or f"tracked: {self.report.source}", world="camera")


class FaceTracker:
    """Track the main face of videos and photos (module docstring). MediaPipe's graphs start
    on first use and are reused; :meth:`close` (or ``with``) releases them."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config if config is not None else TrackerConfig()
        self._faces: MediaPipeFaces | None = None

    def close(self) -> None:
        if self._faces is not None:
            self._faces.close()
            self._faces = None

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def faces(self) -> MediaPipeFaces:
        if self._faces is None:
            self._faces = MediaPipeFaces(self.config.detection_confidence)
        return self._faces

    def intrinsics(self, height: int, width: int) -> Tensor:
        return intrinsics_from_fov(self.config.fov_deg, width, height, torch.float64)

    def track(self, frames: Tensor, fps: float = 25.0, *, name: str = "video",
              K: Tensor | None = None, progress: bool = False) -> FaceTrack:
        """Track ``uint8 (F, H, W, 3)`` frames. ``NoFaceError`` naming ``name`` when no frame
        has a face, ``ValueError`` when the face is smaller than ``config.min_face_px``."""
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"{name}: expected uint8 (F, H, W, 3) RGB frames, got "
                             f"{frames.dtype} {tuple(frames.shape)}")
        count, height, width = frames.shape[:3]
        K = self.intrinsics(height, width) if K is None else K.double()
        raw, counts = self._landmarks(frames, name, progress)
        detected = torch.tensor([points is not None for points in raw])
        if not bool(detected.any()):
            raise NoFaceError(f"{name}: no face found in any of its {count} frames")
        stacked = torch.stack([torch.from_numpy(p) if p is not None else
                               torch.full((478, 3), float("nan")) for p in raw]).double()
        filled = fill_missing(stacked, detected)
        return self._finish(filled, detected, counts, K, height, width, fps, name)

    def track_image(self, image: Tensor, *, name: str = "image", K: Tensor | None = None
                    ) -> FaceTrack:
        """Track one photo ``uint8 (H, W, 3)`` -> a 1-frame :class:`FaceTrack`."""
        image = torch.as_tensor(image)
        return self.track(image[None], name=name, K=K)

    def _landmarks(self, frames: Tensor, name: str, progress: bool
                   ) -> tuple[list[np.ndarray | None], list[int]]:
        """Per frame: the chosen face's landmarks (or None) and how many faces were seen."""
        faces, previous = self.faces, None
        raw, counts = [], []
        for frame in tqdm(frames.numpy(), desc=f"tracking {name}", unit="frame",
                          disable=not progress, dynamic_ncols=True):
            found = faces.detect(frame)
            counts.append(len(found))
            chosen = _choose(found, previous)
            points = None if chosen is None else faces.landmarks(frame, chosen)
            if points is not None:
                previous = chosen
            raw.append(points)
        return raw, counts

    def _finish(self, landmarks: Tensor, detected: Tensor, counts: list[int], K: Tensor,
                height: int, width: int, fps: float, name: str) -> FaceTrack:
        smoothing = self.config.smoothing
        pose, _ = fit_head_pose(landmarks, K)
        unit = float((FACE_BOX_M * pose.scale).median())  # ≈ face-box side, pixels
        landmarks = one_euro(landmarks / unit, fps, smoothing.landmarks) * unit
        pose, residual = fit_head_pose(landmarks, K)
        vector = pose.to_vector()
        vector[:, :4] = quaternion_continuity(vector[:, :4])
        vector[:, 5:] = vector[:, 5:] / unit
        vector = one_euro(vector, fps, smoothing.pose)
        vector[:, 5:] = vector[:, 5:] * unit
        pose = HeadPose.from_vector(vector)
        boxes = _smooth_boxes(expression_boxes(pose, K), fps, smoothing, unit)
        face_px = float(boxes.side.median())
        if face_px < self.config.min_face_px:
            raise ValueError(f"{name}: the face is too small ({face_px:.0f} px face box; at "
                             f"least {self.config.min_face_px:.0f} px is needed): use a closer "
                             "or higher-resolution video")
        others = [c for c in counts if c > 1]
        report = TrackingReport(
            source=name, frames=len(detected),
            filled=tuple((~detected).nonzero().flatten().tolist()),
            frames_with_other_faces=len(others), most_faces=max(counts),
            face_px=face_px, residual_px=float(residual[detected].mean()))
        return FaceTrack(landmarks.float(), detected, pose, boxes, K.float(), height, width,
                         float(fps), report)


def _choose(found: list[Detection], previous: Detection | None) -> Detection | None:
    """The largest face, or the one whose centre is nearest the previous choice's."""
    if not found:
        return None
    if previous is None:
        return found[0]
    px, py = previous.center

    def distance(detection: Detection) -> float:
        x, y = detection.center
        return math.hypot(x - px, y - py) / previous.side

    return min(found, key=distance)


def expression_boxes(pose: HeadPose, K: Tensor) -> FaceBoxes:
    """Expression crop boxes of a tracked pose: the canonical face's five points moved by it
    and projected through ``K`` — the box of
    :func:`~factorportrait.expression.crop.face_boxes` (centre between the pupils' centre and
    the mouth, side :data:`FACE_BOX_M` at that point's depth, roll from the pupils)."""
    from factorportrait.tracking.canonical import canonical_face

    points = face_points(canonical_face())  # (5, 3): left, right pupil, nose, mouth, chin
    anchor = ((points[0] + points[1]) / 2 + points[3]) / 2
    stacked = torch.cat([points, anchor[None]])  # (6, 3)
    camera = pose.camera_points(stacked, K)  # (F, 6, 3)
    pixels = pose.project(stacked, K).double()  # (F, 6, 2)
    eye_line = pixels[:, 0] - pixels[:, 1]  # right pupil -> left pupil
    roll = torch.atan2(eye_line[:, 1], eye_line[:, 0])
    focal = (K[0, 0] + K[1, 1]).double() / 2
    side = focal * FACE_BOX_M / camera[:, 5, 2]
    return FaceBoxes(pixels[:, 5].float(), side.float(), roll.float())


def _smooth_boxes(boxes: FaceBoxes, fps: float, smoothing: Smoothing, unit: float) -> FaceBoxes:
    if smoothing.boxes is None:
        return boxes
    roll = torch.from_numpy(np.unwrap(boxes.roll.double().numpy()))
    values = torch.cat([boxes.center.double() / unit, boxes.side.double().log()[:, None],
                        roll[:, None]], 1)
    values = one_euro(values, fps, smoothing.boxes)
    return FaceBoxes((values[:, :2] * unit).float(), values[:, 2].exp().float(),
                     values[:, 3].float())
