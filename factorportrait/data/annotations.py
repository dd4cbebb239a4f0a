"""Per-clip annotations: one safetensors file of per-frame tensors plus JSON metadata.

Keys, shapes and units (``F`` = frames of the clip; cameras in the OpenCV convention — x right,
y down, z forward — metres and pixels, as in docs/cameras.md):

    K                (F, 3, 3)  intrinsics in pixels of the clip's video (``width`` × ``height``)
    c2w              (F, 4, 4)  camera-to-world; rotation orthonormal with det +1
    head_rotation    (F, 3)     head rotation, axis-angle in radians, world frame
    head_translation (F, 3)     head translation in metres, world frame
    body_pose        (F, P)     optional body pose parameters (e.g. SMPL-X axis-angles)
    expression       (F, E)     optional named expression parameters (``expression_names``)
    expression_codes (F, D)     optional latent expression codes (D = 128 in the paper)
    betas            (S,)       optional clip-constant body/head shape parameters
    mesh.<name>      (F, ...)   optional further per-frame mesh parameters

Metadata (the safetensors header's ``"factorportrait"`` entry, a JSON string): ``format``,
``version``, ``width``, ``height``, ``fps``, ``kind``, ``expression_names``. No pickle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from factorportrait.data.format import KINDS
from factorportrait.io.atomic import PathLike
from factorportrait.io.tagged import read_tagged, write_tagged

ANNOTATION_FORMAT = "factorportrait.annotations"
ANNOTATION_VERSION = 1
PER_FRAME = {"K": (3, 3), "c2w": (4, 4), "head_rotation": (3,), "head_translation": (3,),
             "body_pose": (None,), "expression": (None,), "expression_codes": (None,)}
REQUIRED = ("K", "c2w", "head_rotation", "head_translation")
MESH_PREFIX = "mesh."


@dataclass(frozen=True, eq=False)
class ClipAnnotations:
    """Per-frame annotations of one clip (shapes and units: module docstring).

    Every per-frame tensor has the same first dimension ``F``; ``betas`` is clip-constant.
    ``width``/``height`` are the pixel size ``K`` refers to; ``expression_names`` has one name
    per ``expression`` column (or is empty). Structure is checked here; camera validity
    (finite, orthonormal, positive focal lengths) is the validator's job, so broken data can
    still be loaded and reported. Tensors keep their dtype and are compared by value with
    ``torch.equal`` on ``tensors()`` (the dataclass defines no ``==``).
    """

    K: Tensor
    c2w: Tensor
    head_rotation: Tensor
    head_translation: Tensor
    width: int
    height: int
    fps: float
    kind: str
    body_pose: Tensor | None = None
    expression: Tensor | None = None
    expression_codes: Tensor | None = None
    betas: Tensor | None = None
    mesh: dict[str, Tensor] = field(default_factory=dict)
    expression_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mesh", dict(self.mesh))
        object.__setattr__(self, "expression_names", tuple(self.expression_names))
        _check_meta(self.width, self.height, self.fps, self.kind, self.expression_names)
        object.__setattr__(self, "fps", float(self.fps))
        frames = self.num_frames
        for name, trailing in PER_FRAME.items():
            _check_tensor(name, getattr(self, name), frames, trailing)
        for name, value in self.mesh.items():
            _check_tensor(f"{MESH_PREFIX}{name}", value, frames, None)
        if self.betas is not None:
            _check_tensor("betas", self.betas, None, (None,))
        if self.expression_names:
            columns = None if self.expression is None else self.expression.shape[1]
            if columns != len(self.expression_names):
                raise ValueError(f"annotations: {len(self.expression_names)} expression_names "
                                 f"but expression has {columns} columns")

    @property
    def num_frames(self) -> int:
        """``F``, the number of frames (``K.shape[0]``)."""
        if not isinstance(self.K, Tensor) or self.K.ndim == 0:
            raise ValueError(f"annotations: K must be a tensor (F, 3, 3), got {self.K!r}")
        return int(self.K.shape[0])

    def tensors(self) -> dict[str, Tensor]:
        """The tensors under their file keys (``K``, …, ``mesh.<name>``); absent ones left out."""
        out = {name: getattr(self, name) for name in (*PER_FRAME, "betas")
               if getattr(self, name) is not None}
        out.update({f"{MESH_PREFIX}{name}": value for name, value in self.mesh.items()})
        return out


def _check_meta(width: object, height: object, fps: object, kind: object,
                names: tuple) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"annotations: {name} must be a positive int, got {value!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (
            math.isfinite(fps) and fps > 0):
        raise ValueError(f"annotations: fps must be a positive number, got {fps!r}")
    if kind not in KINDS:
        raise ValueError(f"annotations: unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"annotations: expression_names must be strings, got {names!r}")


def _describe(frames: int | None, trailing: tuple[int | None, ...] | None) -> str:
    dims = ["F"] * (frames is not None)
    dims += ["..."] if trailing is None else ["D" if t is None else str(t) for t in trailing]
    return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")


def _check_tensor(name: str, value: object, frames: int | None,
                  trailing: tuple[int | None, ...] | None) -> None:
    """``value`` is None (if optional) or a float tensor ``(frames, *trailing)``.

    ``frames=None``: no leading frame dimension; ``trailing=None``: any trailing dimensions;
    a ``None`` inside ``trailing``: any size there.
    """
    if value is None:
        if name in REQUIRED:
            raise ValueError(f"annotations: {name} is required")
        return
    want = _describe(frames, trailing)
    if not isinstance(value, Tensor) or not value.is_floating_point():
        got = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"annotations: {name} must be a floating-point tensor {want}, "
                         f"got {got}")
    shape = tuple(value.shape)
    rest = shape if frames is None else shape[1:]
    ok = frames is None or shape[:1] == (frames,)
    if trailing is not None:
        ok = ok and len(rest) == len(trailing) and all(
            t is None or t == r for t, r in zip(trailing, rest))
    if not ok:
        frame_count = "" if frames is None else f" with F = {frames} (K's frame count)"
        raise ValueError(f"annotations: {name} must have shape {want}{frame_count}, "
                         f"got {shape}")


def save_annotations(path: PathLike, annotations: ClipAnnotations) -> None:
    """Write ``annotations`` to a ``.safetensors`` file atomically (metadata as JSON)."""
    if not isinstance(annotations, ClipAnnotations):
        raise ValueError(f"save_annotations {path}: expected ClipAnnotations, got "
                         f"{type(annotations).__name__}")
    meta = {"format": ANNOTATION_FORMAT, "version": ANNOTATION_VERSION,
            "width": annotations.width, "height": annotations.height, "fps": annotations.fps,
            "kind": annotations.kind, "expression_names": list(annotations.expression_names)}
    write_tagged(path, annotations.tensors(), meta)


def load_annotations(path: PathLike) -> ClipAnnotations:
    """Read a clip's annotation file → ``ClipAnnotations`` (shapes validated).

    ``FileNotFoundError`` for a missing file; ``ValueError`` naming the file for a corrupt one,
    missing metadata, unknown tensor keys or inconsistent shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotations {path} do not exist")
    meta, tensors = read_tagged(path, "annotations", ANNOTATION_FORMAT, ANNOTATION_VERSION)
    known = {*PER_FRAME, "betas"}
    unknown = sorted(k for k in tensors if k not in known and not k.startswith(MESH_PREFIX))
    if unknown:
        raise ValueError(f"annotations {path}: unknown tensor key(s) {unknown}; known: "
                         f"{', '.join(sorted(known))}, {MESH_PREFIX}<name>")
    mesh = {k[len(MESH_PREFIX):]: v for k, v in tensors.items() if k.startswith(MESH_PREFIX)}
    try:
        return ClipAnnotations(
            **{k: v for k, v in tensors.items() if k in known}, mesh=mesh,
            width=meta.get("width"), height=meta.get("height"), fps=meta.get("fps"),
            kind=meta.get("kind"), expression_names=tuple(meta.get("expression_names", ())))
    except (TypeError, ValueError) as err:
        raise ValueError(f"annotations {path}: {err}") from err
