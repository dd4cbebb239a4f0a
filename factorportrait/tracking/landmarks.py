"""MediaPipe face detection and the 478-point face mesh, per frame.

mediapipe 0.10.14's ``mp.solutions`` graphs ship their models inside the wheel, so nothing is
downloaded. Per frame, the full-range BlazeFace detector (``model_selection=1``: faces up to
about 5 m, small in the frame) gives boxes and scores; the face mesh (with the refined eye and
iris points, 478 in all) then runs on a square crop around one chosen box, upsampled to
``mesh_input`` pixels, and its points are mapped back to frame pixels.

Landmarks ``(478, 3)`` float32: ``x, y`` frame pixels (pixel ``(u, v)`` covers
``[u, u+1) × [v, v+1)``, docs/cameras.md), ``z`` MediaPipe's relative depth in the same pixel
scale, larger = farther from the camera (so ``x, y, z`` is an OpenCV-like right-handed frame).
Point 468 is the subject's right iris centre, 473 the left one (:mod:`.canonical`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

NUM_LANDMARKS = 478
MESH_INPUT = 256  # side of the square crop the face mesh sees (pixels)
MESH_CONTEXT = 2.0  # the mesh crop's side in detection-box sides


@dataclass(frozen=True)
class Detection:
    """A detected face: ``box`` ``(x0, y0, x1, y1)`` frame pixels and the detector's score."""

    box: tuple[float, float, float, float]
    score: float

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def side(self) -> float:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


def import_mediapipe():
    """``mediapipe`` (0.10.x with ``mp.solutions``), or an ImportError that says what to do."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ INFO/WARNING lines
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mediapipe
    except ImportError as err:
        raise ImportError("face tracking needs mediapipe 0.10.14: pip install "
                          "'mediapipe==0.10.14' (part of factorportrait's dependencies)") from err
    if not hasattr(mediapipe, "solutions"):
        raise ImportError(f"mediapipe {getattr(mediapipe, '__version__', '?')} has no "
                          "mp.solutions; install mediapipe==0.10.14")
    return mediapipe


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C++ log lines MediaPipe prints to the process's stderr while its graphs
    start (TFLite delegate notices, absl's "log messages before InitializeLog")."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (some embedded interpreters)
        yield
        return
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class MediaPipeFaces:
    """Face boxes and face-mesh landmarks of RGB frames (``uint8 (H, W, 3)`` numpy arrays).

    Args:
        detection_confidence: minimum BlazeFace score of a face.
        landmark_confidence: minimum confidence of the face mesh's own face presence.
        mesh_input: side of the upsampled square crop given to the face mesh.
    """

    def __init__(self, detection_confidence: float = 0.5, landmark_confidence: float = 0.5,
                 mesh_input: int = MESH_INPUT) -> None:
        mp = import_mediapipe()
        self.mesh_input = mesh_input
        with _quiet_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._detectors = [mp.solutions.face_detection.FaceDetection(
                model_selection=model, min_detection_confidence=detection_confidence)
                for model in (0, 1)]
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                min_detection_confidence=landmark_confidence)
            blank = np.zeros((64, 64, 3), np.uint8)  # first calls print the delegate notices
            for detector in self._detectors:
                detector.process(blank)
            self._mesh.process(blank)

    def close(self) -> None:
        for detector in self._detectors:
            detector.close()
        self._mesh.close()

    def __enter__(self) -> "MediaPipeFaces":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in ``frame``, largest first: the short-range model's (faces within about
        2 m), else the full-range one's (small, distant faces)."""
        frame = np.ascontiguousarray(frame)
        for detector in self._detectors:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = self._boxes(detector.process(frame), *frame.shape[:2])
            if found:
                return found
        return []

    @staticmethod
    def _boxes(result, height: int, width: int) -> list[Detection]:
        found = []
        for detection in result.detections or ():
            box = detection.location_data.relative_bounding_box
            x0, y0 = box.xmin * width, box.ymin * height
            x1, y1 = x0 + box.width * width, y0 + box.height * height
            if box.width > 0 and box.height > 0:
                found.append(Detection((x0, y0, x1, y1), float(detection.score[0])))
        return sorted(found, key=lambda d: -d.side)

    def landmarks(self, frame: np.ndarray, detection: Detection) -> np.ndarray | None:
        """``(478, 3)`` landmarks of the face in ``detection`` (module docstring), or None when
        the face mesh finds no face in its crop."""
        from factorportrait.tracking.crop import FaceBoxes, crop_faces

        side = MESH_CONTEXT * detection.side
        cx, cy = detection.center
        boxes = FaceBoxes(torch.tensor([[cx, cy]]), torch.tensor([side]), torch.zeros(1))
        pixels = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
        crop = crop_faces(pixels, boxes, self.mesh_input)[0]  # (3, S, S)
        crop = crop.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = self._mesh.process(np.ascontiguousarray(crop))
        if not result.multi_face_landmarks:
            return None
        points = np.array([(p.x, p.y, p.z) for p in result.multi_face_landmarks[0].landmark],
                          dtype=np.float64)  # crop-normalised
        if points.shape != (NUM_LANDMARKS, 3):
            raise RuntimeError(f"MediaPipe face mesh returned {points.shape[0]} points, "
                               f"expected {NUM_LANDMARKS} (refine_landmarks)")
        out = np.empty_like(points)
        out[:, 0] = cx + (points[:, 0] - 0.5) * side
        out[:, 1] = cy + (points[:, 1] - 0.5) * side
        out[:, 2] = points[:, 2] * side
        return out.astype(np.float32)
