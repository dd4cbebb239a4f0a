"""Face tracking for real photos and videos (docs/tracking.md): MediaPipe face detection and the
478-point face mesh, head pose by a perspective fit of our canonical face, One-Euro smoothing,
crops as similarity transforms with their inverse (paste-back), and driving videos turned into
control tracks.

Modules: ``landmarks`` (MediaPipe), ``canonical`` (the canonical face), ``pose`` (head pose),
``smoothing``, ``tracker`` (:class:`FaceTracker` -> :class:`FaceTrack`), ``crop`` (crops and
paste-back), ``video`` (driving videos: checks, tracking, codes).
"""

from factorportrait.tracking.crop import FaceBoxes, crop_faces, paste_back
from factorportrait.tracking.pose import HeadPose, fit_head_pose
from factorportrait.tracking.smoothing import OneEuro, Smoothing
from factorportrait.tracking.tracker import (FaceTrack, FaceTracker, NoFaceError,
                                             TrackerConfig, TrackingReport)
from factorportrait.tracking.video import load_video, track_video, tracked_codes

__all__ = [
    "FaceBoxes", "FaceTrack", "FaceTracker", "HeadPose", "NoFaceError", "OneEuro", "Smoothing",
    "TrackerConfig", "TrackingReport", "crop_faces", "fit_head_pose", "load_video",
    "paste_back", "track_video", "tracked_codes",
]
