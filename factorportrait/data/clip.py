"""Reading one clip: its annotations, frames and cameras at the training size.

Frames are centre-cropped to the target aspect ratio, then resized (bilinear, antialiased);
the cameras follow with ``Cameras.crop`` then ``Cameras.resize``, so a world point projects
to the same image content before and after. Pixels become float ``(3, F, H, W)`` in [-1, 1]
(``x / 127.5 − 1``; normal maps use the same mapping, so a decoded normal is the stored
vector).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from factorportrait.data.annotations import ClipAnnotations, load_annotations
from factorportrait.data.format import ClipRecord
from factorportrait.geometry.cameras import Cameras
from factorportrait.io.video import read_video, resize_frames, video_info

READ_CHUNK = 16  # frames decoded at full resolution at a time


def crop_box(height: int, width: int, size: tuple[int, int] | None
             ) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)``: the centred crop of an ``height × width``
    image with the aspect ratio of ``size = (H, W)`` (the whole image for ``None``)."""
    if size is None:
        return 0, 0, height, width
    target_h, target_w = size
    if width * target_h > height * target_w:  # too wide: crop the width
        crop_h, crop_w = height, min(width, round(height * target_w / target_h))
    else:  # too tall: crop the height
        crop_h, crop_w = min(height, round(width * target_h / target_w)), width
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def to_unit_range(frames: Tensor) -> Tensor:
    """``uint8 (F, H, W, 3)`` → float ``(3, F, H, W)`` in [-1, 1]."""
    return frames.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


@dataclass(frozen=True, eq=False)
class ClipSource:
    """One opened clip: its record, annotations, frame count and native size (``height`` ×
    ``width``, the size the annotations' ``K`` refers to)."""

    root: Path
    record: ClipRecord
    annotations: ClipAnnotations
    num_frames: int
    height: int
    width: int

    @classmethod
    def open(cls, root: Path, record: ClipRecord, check_videos: bool = True) -> ClipSource:
        """Load the annotations; with ``check_videos``, open the video (and normal-map video)
        and check frame counts and sizes against them.

        Raises ``FileNotFoundError`` / ``ValueError`` naming the clip and file.
        """
        path = record.resolve(root, "annotations")
        annotations = load_annotations(path)
        count, height, width = annotations.num_frames, annotations.height, annotations.width
        if record.num_frames is not None and record.num_frames != count:
            raise ValueError(f"clip {record.id!r}: the manifest says {record.num_frames} "
                             f"frames, annotations {path} have {count}")
        if check_videos:
            for name in ("video", "normals"):
                video = record.resolve(root, name)
                if video is None:
                    continue
                frames, _, video_h, video_w = video_info(video)
                if frames != count:
                    raise ValueError(f"clip {record.id!r}: frame-count mismatch: {name} {video} "
                                     f"has {frames} frames, annotations {path} have {count}")
                if (video_h, video_w) != (height, width):
                    raise ValueError(f"clip {record.id!r}: size mismatch: {name} {video} is "
                                     f"{video_h}x{video_w}, annotations say {height}x{width}")
        return cls(Path(root), record, annotations, count, height, width)

    @property
    def has_normals(self) -> bool:
        return self.record.normals is not None

    def output_size(self, size: tuple[int, int] | None) -> tuple[int, int]:
        """``(H, W)`` of frames read at ``size`` (the native size for ``None``)."""
        return (self.height, self.width) if size is None else tuple(size)

    def cameras(self, frames: list[int], size: tuple[int, int] | None) -> Cameras:
        """Cameras ``(len(frames))`` of the given frames, with ``K`` for images at ``size``."""
        K = self.annotations.K[frames].float()
        c2w = self.annotations.c2w[frames].float()
        cameras = Cameras(K, c2w, width=self.width, height=self.height)
        top, left, crop_h, crop_w = crop_box(self.height, self.width, size)
        height, width = self.output_size(size)
        return cameras.crop(top, left, crop_h, crop_w).resize(height, width)

    def read(self, name: str, frames: list[int], size: tuple[int, int] | None) -> Tensor:
        """Frames of ``name`` (video | normals), cropped and resized to ``size`` → float
        ``(3, len(frames), H, W)`` in [-1, 1]."""
        path = self.record.resolve(self.root, name)
        if path is None:
            raise ValueError(f"clip {self.record.id!r} has no {name} file")
        top, left, crop_h, crop_w = crop_box(self.height, self.width, size)
        out_size = self.output_size(size)
        chunks = []
        for i in range(0, len(frames), READ_CHUNK):  # bound full-resolution memory
            chunk = read_video(path, frames[i:i + READ_CHUNK])  # (n, H0, W0, 3) uint8
            if tuple(chunk.shape[1:3]) != (self.height, self.width):
                raise ValueError(f"clip {self.record.id!r}: {name} {path} frames are "
                                 f"{tuple(chunk.shape[1:3])}, annotations say "
                                 f"{(self.height, self.width)}")
            chunk = chunk[:, top:top + crop_h, left:left + crop_w]
            chunks.append(resize_frames(chunk, out_size))
        return to_unit_range(torch.cat(chunks))

    def per_frame(self, frames: list[int]) -> dict[str, Tensor]:
        """Head pose ``(F, 3)`` ×2 and, when annotated, ``expression_codes (F, D)`` and
        ``expression (F, E)`` of the given frames (float32)."""
        ann = self.annotations
        out = {"head_rotation": ann.head_rotation[frames].float(),
               "head_translation": ann.head_translation[frames].float()}
        for name in ("expression_codes", "expression"):
            value = getattr(ann, name)
            if value is not None:
                out[name] = value[frames].float()
        for name, value in out.items():  # the validator's check, on the window served
            finite = torch.isfinite(value).flatten(1).all(1)
            if not bool(finite.all()):
                bad = frames[int((~finite).nonzero()[0, 0])]
                raise ValueError(f"clip {self.record.id!r}: annotation {name} has NaN/Inf "
                                 f"values at frame {bad}")
        return out
