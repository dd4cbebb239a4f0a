"""Check a dataset folder and report every problem with its clip id (``tools/validate_dataset.py``).

Per clip: files exist; the video (and normal-map video) open and decode with decord (first and
last frame, or every frame with ``full_decode``); frame counts agree between video, normals,
annotations and the manifest's ``num_frames``; sizes agree between video, normals and the
annotations' ``width``/``height``; fps and kind agree; cameras are finite with positive focal
lengths, ``K`` is ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``, ``c2w`` rotations are orthonormal
with det +1 (within ``ROTATION_TOLERANCE``) and its last row is ``[0, 0, 0, 1]``; other
annotation tensors are finite. Across clips: malformed manifest lines, unknown kinds,
duplicate ids, and views of one ``take`` that disagree on the identity.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from factorportrait.data.annotations import ClipAnnotations, load_annotations
from factorportrait.data.format import ClipRecord, ManifestLine, manifest_path, scan_manifest
from factorportrait.io.atomic import PathLike
from factorportrait.io.video import DECODE_CHUNK, read_video, video_info

ROTATION_TOLERANCE = 1e-4  # max |RᵀR − I| and |det R − 1|
FPS_TOLERANCE = 1e-2  # frames per second


@dataclass(frozen=True)
class Problem:
    """One problem: the clip it belongs to (``None``: the dataset as a whole) and what is wrong."""

    clip_id: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.clip_id if self.clip_id is not None else '<dataset>'}: {self.message}"


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of ``validate_dataset``: clip count and every problem found."""

    root: Path
    num_clips: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """``"N clips OK"``, or how many problems touch how many clips."""
        if self.ok:
            return f"{self.num_clips} clips OK"
        clips = {p.clip_id for p in self.problems if p.clip_id is not None}
        return (f"{len(self.problems)} problem(s) in {len(clips)} of {self.num_clips} clips "
                f"({self.root})")

    def print(self) -> int:
        """Print every problem and the summary (what the tools' ``--validate`` shows) ->
        the exit status: 0 when the dataset is OK, 1 otherwise."""
        for problem in self.problems:
            print(problem)
        print(self.summary())
        return 0 if self.ok else 1


def validate_dataset(root: PathLike, full_decode: bool = False) -> ValidationReport:
    """Check the dataset at ``root`` (folder with ``manifest.jsonl``, or the manifest file).

    ``full_decode`` decodes every frame of every video (slow, finds mid-file corruption);
    by default the first and last frames are decoded.
    """
    path = manifest_path(root)
    root = path.parent
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lines = scan_manifest(path)
    except OSError as err:
        return ValidationReport(root, 0, (Problem(None, str(err)),))
    problems = [Problem(None, str(w.message)) for w in caught]  # a partial last line
    problems += _manifest_problems(lines)
    records = [entry.record for entry in lines if entry.record is not None]
    for record in records:
        problems += [Problem(record.id, m) for m in check_clip(root, record, full_decode)]
    problems += _take_problems(records)
    return ValidationReport(root, len(lines), tuple(problems))


def _manifest_problems(lines: list[ManifestLine]) -> list[Problem]:
    """Malformed lines (unknown kinds included) and duplicate ids."""
    problems = [Problem(e.clip_id, f"manifest line {e.line}: {e.error}")
                for e in lines if e.error is not None]
    first: dict[str, int] = {}
    for entry in lines:
        clip_id = entry.record.id if entry.record is not None else entry.clip_id
        if clip_id is None:
            continue
        if clip_id in first:
            problems.append(Problem(clip_id, f"duplicate id (manifest lines {first[clip_id]} "
                                             f"and {entry.line})"))
        else:
            first[clip_id] = entry.line
    return problems


def _take_problems(records: list[ClipRecord]) -> list[Problem]:
    identities: dict[str, set[str]] = defaultdict(set)
    members: dict[str, list[str]] = defaultdict(list)
    for record in records:
        if record.take is not None:
            identities[record.take].add(record.identity)
            members[record.take].append(record.id)
    return [Problem(clip_id, f"take {take!r} mixes identities {sorted(identities[take])}")
            for take in sorted(identities) if len(identities[take]) > 1
            for clip_id in members[take]]


def check_clip(root: PathLike, record: ClipRecord, full_decode: bool = False) -> list[str]:
    """Every problem of one clip, as messages (files, decoding, counts, sizes, cameras)."""
    messages: list[str] = []
    videos = {}
    for name in ("video", "normals"):
        path = record.resolve(root, name)
        if path is not None:
            videos[name] = _check_video(path, name, full_decode, messages)
    annotations = None
    path = record.resolve(root, "annotations")
    if not path.is_file():
        messages.append(f"annotations: missing file {path}")
    else:
        try:
            annotations = load_annotations(path)
        except ValueError as err:
            messages.append(f"annotations: {err}")
    messages += _consistency(record, videos, annotations)
    if annotations is not None:
        messages += check_cameras(annotations.K, annotations.c2w)
        messages += _finite_problems(annotations)
    return messages


def _check_video(path: Path, name: str, full_decode: bool,
                 messages: list[str]) -> tuple[int, float, int, int] | None:
    """``(num_frames, fps, height, width)`` of a readable video; problems go to ``messages``."""
    if not path.is_file():
        messages.append(f"{name}: missing file {path}")
        return None
    try:
        info = video_info(path)
        frames = range(info[0]) if full_decode else sorted({0, max(info[0] - 1, 0)})
        for start in range(0, len(frames), DECODE_CHUNK):  # never the whole video in memory
            read_video(path, frames[start:start + DECODE_CHUNK])
    except ValueError as err:
        messages.append(f"{name}: {err}")
        return None
    return info


def _consistency(record: ClipRecord, videos: dict, annotations: ClipAnnotations | None
                 ) -> list[str]:
    """Frame counts, sizes, fps and kind that should agree across the clip's sources."""
    counts, sizes, rates = {}, {}, {"manifest": record.fps}
    if record.num_frames is not None:
        counts["manifest num_frames"] = record.num_frames
    for name, info in videos.items():
        if info is not None:
            counts[name], rates[name], sizes[name] = info[0], info[1], (info[2], info[3])
    messages = []
    if annotations is not None:
        counts["annotations"] = annotations.num_frames
        sizes["annotations"] = (annotations.height, annotations.width)
        rates["annotations"] = annotations.fps
        if annotations.kind != record.kind:
            messages.append(f"kind mismatch: manifest {record.kind!r}, annotations "
                            f"{annotations.kind!r}")
    if len(set(counts.values())) > 1:
        messages.append("frame-count mismatch: " + _listing(counts))
    if len(set(sizes.values())) > 1:
        messages.append("size mismatch (height, width): " + _listing(sizes))
    if max(rates.values()) - min(rates.values()) > FPS_TOLERANCE:
        messages.append("fps mismatch: " + _listing({k: round(v, 3) for k, v in rates.items()}))
    return messages


def _listing(values: dict) -> str:
    return ", ".join(f"{name} {value}" for name, value in values.items())


def _frames(bad: Tensor, what: str, detail: Tensor | None = None) -> list[str]:
    """One message for the frames flagged in ``bad (F,)``, naming the first (and its value)."""
    if not bool(bad.any()):
        return []
    first = int(bad.nonzero()[0, 0])
    value = "" if detail is None else f" ({float(detail[first]):.3g})"
    return [f"{what} in {int(bad.sum())} of {bad.numel()} frame(s) (first: frame {first}"
            f"{value})"]


def check_cameras(K: Tensor, c2w: Tensor, tolerance: float = ROTATION_TOLERANCE) -> list[str]:
    """Problems of cameras ``K (F,3,3)``, ``c2w (F,4,4)`` (OpenCV, pixels, metres), as messages."""
    K, c2w = K.double(), c2w.double()
    finite_k = torch.isfinite(K).flatten(1).all(1)
    finite_c = torch.isfinite(c2w).flatten(1).all(1)
    messages = _frames(~finite_k, "K has non-finite values")
    messages += _frames(~finite_c, "c2w has non-finite values")
    K = torch.where(finite_k[:, None, None], K, torch.eye(3, dtype=K.dtype))
    c2w = torch.where(finite_c[:, None, None], c2w, torch.eye(4, dtype=c2w.dtype))
    focal = torch.minimum(K[:, 0, 0], K[:, 1, 1])
    messages += _frames(finite_k & (focal <= 0), "non-positive focal length", focal)
    k_form = torch.cat([K[:, 2] - K.new_tensor([0.0, 0.0, 1.0]), K[:, 1, :1]], 1).abs().amax(1)
    messages += _frames(k_form > 1e-6, "K is not [[fx, s, cx], [0, fy, cy], [0, 0, 1]]",
                        k_form)
    rotation = c2w[:, :3, :3]
    identity = torch.eye(3, dtype=c2w.dtype)
    gram = (rotation.transpose(1, 2) @ rotation - identity).abs().amax((1, 2))
    det = torch.linalg.det(rotation)
    messages += _frames(gram > tolerance, "c2w rotation not orthonormal (max |RᵀR − I|)", gram)
    reflection = (gram <= tolerance) & ((det - 1).abs() > tolerance)
    messages += _frames(reflection, "c2w rotation has det ≠ +1 (a reflection)", det)
    last = (c2w[:, 3] - c2w.new_tensor([0.0, 0.0, 0.0, 1.0])).abs().amax(1)
    messages += _frames(last > 1e-6, "c2w's last row is not [0, 0, 0, 1]", last)
    return messages


def _finite_problems(annotations: ClipAnnotations) -> list[str]:
    """Non-finite values in the non-camera tensors (head pose, expressions, …)."""
    messages = []
    for name, value in annotations.tensors().items():
        if name in ("K", "c2w") or bool(torch.isfinite(value).all()):
            continue
        if name == "betas":
            messages.append("betas has non-finite values")
        else:
            messages += _frames(~torch.isfinite(value.reshape(len(value), -1)).all(1),
                                f"{name} has non-finite values")
    return messages
