"""The results folder ``tools/evaluate.py`` scores (docs/evaluation.md): one sub-folder per
generated video, its files named by role.

::

    results/
      <case>/generated.mp4              the generated video (required)
      <case>/reference.png              the source portrait (CSIM against it)
      <case>/ground_truth.mp4           self-reenactment: the frames the video should equal
      <case>/driving.mp4                cross-reenactment: the driving video (another person)
      <case>/driving_pose.mp4           disentangled reenactment: the pose driver ...
      <case>/driving_expression.mp4     ... and the expression driver

The protocol follows from the files (DeX-Portrait §4.1): ``ground_truth.mp4`` makes a
self-reenactment case, ``driving_pose.mp4`` with ``driving_expression.mp4`` a disentangled
one, ``driving.mp4`` a cross-reenactment one. Videos compared frame by frame must have the
generated video's frame count. :func:`write_case` writes a case (atomically, file by file);
the demo's ``evaluate --cases DIR`` writes its held-out clips this way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

PROTOCOLS = ("self", "cross", "disentangled")
VIDEO_ROLES = ("generated", "ground_truth", "driving", "driving_pose", "driving_expression")


@dataclass(frozen=True)
class Case:
    """One generated video and what it is scored against (paths; ``None`` when absent)."""

    name: str
    protocol: str
    generated: Path
    reference: Path | None = None
    ground_truth: Path | None = None
    driving: Path | None = None
    driving_pose: Path | None = None
    driving_expression: Path | None = None

    @property
    def pose_target(self) -> Path | None:
        """The video whose head pose the generated one should have (APD)."""
        return {"self": self.ground_truth, "cross": self.driving,
                "disentangled": self.driving_pose}[self.protocol]

    @property
    def expression_target(self) -> Path | None:
        """The video whose expression the generated one should have (AED)."""
        return {"self": self.ground_truth, "cross": self.driving,
                "disentangled": self.driving_expression}[self.protocol]


def _protocol(folder: Path) -> str:
    has = {role: (folder / f"{role}.mp4").is_file() for role in VIDEO_ROLES}
    if has["ground_truth"]:
        return "self"
    if has["driving_pose"] or has["driving_expression"]:
        if not (has["driving_pose"] and has["driving_expression"]):
            missing = "driving_expression.mp4" if has["driving_pose"] else "driving_pose.mp4"
            raise ValueError(f"results case {folder}: a disentangled case needs both "
                             f"driving_pose.mp4 and driving_expression.mp4; {missing} is missing")
        return "disentangled"
    if has["driving"]:
        return "cross"
    raise ValueError(f"results case {folder}: no ground_truth.mp4, driving.mp4 or "
                     "driving_pose.mp4 + driving_expression.mp4 to score generated.mp4 against")


def read_case(folder: str | os.PathLike) -> Case:
    """The :class:`Case` in ``folder`` (``ValueError`` naming it when it is not one)."""
    folder = Path(folder)
    generated = folder / "generated.mp4"
    if not generated.is_file():
        raise ValueError(f"results case {folder}: generated.mp4 is missing")
    files = {role: folder / f"{role}.mp4" for role in VIDEO_ROLES[1:]}
    reference = folder / "reference.png"
    return Case(folder.name, _protocol(folder), generated,
                reference if reference.is_file() else None,
                **{role: path if path.is_file() else None for role, path in files.items()})


def find_cases(root: str | os.PathLike) -> list[Case]:
    """Every case under ``root`` (its sub-folders holding ``generated.mp4``, sorted by name);
    ``root`` itself may be one case. ``ValueError`` when there is none."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"results folder {root} does not exist or is not a folder")
    if (root / "generated.mp4").is_file():
        return [read_case(root)]
    cases = [read_case(folder) for folder in sorted(root.iterdir())
             if folder.is_dir() and (folder / "generated.mp4").is_file()]
    if not cases:
        raise ValueError(f"results folder {root}: no <case>/generated.mp4 in it "
                         "(layout: docs/evaluation.md)")
    return cases


def write_case(root: str | os.PathLike, name: str, generated: Tensor, fps: float, *,
               reference: Tensor | None = None, ground_truth: Tensor | None = None,
               driving: Tensor | None = None, driving_pose: Tensor | None = None,
               driving_expression: Tensor | None = None) -> Path:
    """Write one case ``root/name`` from ``uint8 (F, H, W, 3)`` videos (and a ``(H, W, 3)``
    reference image); lossless video so the scores see the frames as generated. Each file is
    atomic and ``generated.mp4`` comes last, so an interrupted write leaves no half case for
    :func:`find_cases` to pick up."""
    from PIL import Image

    from factorportrait.io.atomic import atomic_output
    from factorportrait.io.video import write_video

    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    if reference is not None:
        with atomic_output(folder / "reference.png") as tmp:
            Image.fromarray(reference.numpy()).save(tmp, format="PNG")
    videos = {"ground_truth": ground_truth, "driving": driving, "driving_pose": driving_pose,
              "driving_expression": driving_expression, "generated": generated}
    for role, video in videos.items():
        if video is not None:
            write_video(folder / f"{role}.mp4", video, fps=fps, lossless=True)
    return folder
