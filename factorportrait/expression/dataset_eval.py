"""Face boxes from clip annotations, and evaluation sets from a dataset folder.

:func:`annotation_face_boxes` finds the face in frames of any annotated clip: the face points
of the clip's avatar when it is synthetic (``betas``: exact), else a generic face moved by the
annotated head pose, projected through the clip's cameras (docs/dataset.md "Annotations").

:func:`dataset_set` builds an :class:`EvaluationSet` from the clips of one split of a dataset
(e.g. ``tools/make_synthetic.py`` output): ``frames_per_clip`` evenly spaced frames per clip,
cropped at their face boxes; samples with identical expression vectors (the views of a studio
take at the same frame, the frames of a ViewSweep clip) form a group. Different identities never
share an expression there, so retrieval is measured across views (clips) only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from factorportrait.body import axis_angle_to_matrix
from factorportrait.data.annotations import ClipAnnotations, load_annotations
from factorportrait.data.format import ClipRecord, read_manifest
from factorportrait.data.synthetic.identity import avatar_from_annotations
from factorportrait.expression.crop import (
    FaceBoxes,
    avatar_face_points,
    crop_faces,
    face_boxes,
    face_points_from_pose,
)
from factorportrait.expression.evaluate import EvaluationSet
from factorportrait.expression.sets import face_angles, seen_face_angles
from factorportrait.geometry import Cameras, view_angles
from factorportrait.io import read_video


def annotation_face_boxes(annotations: ClipAnnotations, frames: Sequence[int]) -> FaceBoxes:
    """Face boxes (pixels of the clip's ``width × height``) of frames ``frames`` of a clip."""
    index = torch.as_tensor(list(frames), dtype=torch.long)
    cameras = Cameras(annotations.K[index].float(), annotations.c2w[index].float(),
                      annotations.width, annotations.height)
    rotation, translation = annotations.head_rotation[index], annotations.head_translation[index]
    if annotations.betas is not None:
        points = avatar_face_points(avatar_from_annotations(annotations), rotation, translation)
    else:
        points = face_points_from_pose(rotation, translation)
    return face_boxes(cameras, points)


def _clip_samples(root: str | os.PathLike, record: ClipRecord, count: int, crop_size: int
                  ) -> dict[str, Tensor] | None:
    """Crops ``(n, 3, S, S)``, expression ``(n, E)`` and factors ``(n,)`` of ``count`` evenly
    spaced frames of one clip; None when it has no expression parameters."""
    annotations = load_annotations(record.resolve(root, "annotations"))
    if annotations.expression is None:
        return None
    total = annotations.K.shape[0]
    index = torch.linspace(0, total - 1, min(count, total)).round().long().unique()
    video = read_video(record.resolve(root, "video"), frame_indices=index.tolist())
    frames = video.permute(0, 3, 1, 2).float() / 127.5 - 1  # (n, 3, H, W)
    cameras = Cameras(annotations.K[index].float(), annotations.c2w[index].float())
    head = axis_angle_to_matrix(annotations.head_rotation[index].float())  # (n, 3, 3)
    head_yaw, head_pitch = face_angles(-head[:, :, 2])
    view_yaw, view_pitch = seen_face_angles(head, cameras)
    return {"crops": crop_faces(frames, annotation_face_boxes(annotations, index.tolist()),
                                crop_size),
            "expression": annotations.expression[index].float(),
            "head_yaw": head_yaw, "head_pitch": head_pitch,
            "camera_azimuth": view_angles(cameras)[0], "view_yaw": view_yaw,
            "view_pitch": view_pitch}


def dataset_set(root: str | os.PathLike, split: str, crop_size: int, frames_per_clip: int = 8,
                kinds: Sequence[str] | None = None) -> EvaluationSet:
    """An evaluation set from the clips of ``split`` (``train`` includes clips without a
    split) of the dataset at ``root`` (clips without expression parameters are skipped)."""
    records = [r for r in read_manifest(root) if (r.split or "train") == split
               and (kinds is None or r.kind in kinds)]
    identities = {name: i for i, name in enumerate(sorted({r.identity for r in records}))}
    parts: list[dict[str, Tensor]] = []
    for clip, record in enumerate(records):
        samples = _clip_samples(root, record, frames_per_clip, crop_size)
        if samples is None:
            continue
        count = len(samples["crops"])
        samples["identity"] = torch.full((count,), identities[record.identity])
        samples["view"] = torch.full((count,), clip)
        parts.append(samples)
    if not parts:
        raise ValueError(f"dataset {root}: no clips of split {split!r} with expression "
                         "parameters")
    merged = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    group = torch.unique(merged["expression"], dim=0, return_inverse=True)[1]
    factors = {k: merged[k] for k in ("head_yaw", "head_pitch", "camera_azimuth", "view_yaw",
                                       "view_pitch")}
    return EvaluationSet(merged["crops"], merged["expression"], group, merged["identity"],
                         merged["view"], factors, across_identities=False)
