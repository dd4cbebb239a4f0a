"""Real captures -> dataset clips with every annotation the loader needs (docs/tracking.md
"Real captures for training").

Source layout::

    captures/
      phone/<identity>/<clip>.mp4             monocular videos (kind "phone")
      studio/<identity>/<take>/<view>.mp4     synchronised views of one take (kind "studio")
      studio/<identity>/<take>/cameras.json   their calibration: our cameras JSON with one
                                              camera per view in the views' sorted name order,
                                              or a NeRF transforms.json whose file_path stems
                                              name the views

Each clip is tracked (:mod:`factorportrait.tracking`); the procedural avatar is fitted to the
face (placed and scaled so its face points project onto the tracked ones, one scale per clip)
and rendered as the normal-map video from the clip's camera; codes come from an expression
encoder when one is given. Phone clips live in their camera's frame (c2w = identity, ``K``
from the assumed field of view). A studio take lives in its calibration's world: the head's
rotation is the average of the views' (each taken to the world by its camera), its centre is
triangulated from the views' images of it, and all views share that pose.

Annotations (docs/dataset.md): ``K``, ``c2w``, ``head_rotation`` (axis-angle) and
``head_translation`` (the head *centre*, metres — the convention of tracking and of
``face_points_from_pose``, so ``annotation_face_boxes`` finds the face), ``expression_codes``
with an encoder, and ``mesh.avatar_scale (F, 1)``: the fitted avatar's scale, which with
:class:`~factorportrait.inference.mesh_sources.HeadMeshSource` re-renders the normal maps.

Writing follows ``make_synthetic``: per clip its three files atomically, then its manifest
line; a killed run resumes with the same settings; ``captures.json`` holds them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from factorportrait.body import AvatarIdentity, HeadAvatar
from factorportrait.data.annotations import ClipAnnotations, save_annotations
from factorportrait.data.format import MANIFEST_NAME, ClipRecord, append_manifest
from factorportrait.data.writing import claim_settings, exclusive, listed_ids, prepare_folders
from factorportrait.geometry.cameras import Cameras
from factorportrait.geometry.rotations import (matrix_to_axis_angle, matrix_to_quaternion,
                                               quaternion_to_matrix)
from factorportrait.inference.control_track import ControlTrack
from factorportrait.inference.faces import fit_avatar
from factorportrait.inference.mesh_sources import HeadMeshSource, render_normal_maps
from factorportrait.io import write_video
from factorportrait.io.atomic import PathLike
from factorportrait.tracking.canonical import face_points, triangulate
from factorportrait.tracking.pose import fit_multiview_pose
from factorportrait.tracking.tracker import FaceTrack, FaceTracker, TrackerConfig
from factorportrait.tracking.video import load_video, tracked_codes

SETTINGS_NAME = "captures.json"
LOCK_NAME = ".prepare_captures.lock"
TOOL = "prepare_captures"
CALIBRATION_NAMES = ("cameras.json", "transforms.json")
RENDER_CHUNK = 16  # normal-map frames rendered per call


@dataclass(frozen=True)
class CaptureSettings:
    """What a captures folder is made with (``captures.json``)."""

    fov_deg: float = 40.0
    encoder: str | None = None
    heldout: tuple[str, ...] = ()
    max_frames: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "heldout": list(self.heldout)}


@dataclass(frozen=True)
class CaptureItem:
    """One phone video, or one studio take (several views)."""

    kind: str
    identity: str
    name: str
    videos: tuple[Path, ...]
    calibration: Path | None = None

    @property
    def take(self) -> str:
        return f"{self.identity}_{self.name}"

    def clip_ids(self) -> list[str]:
        if self.kind == "phone":
            return [self.take]
        return [f"{self.take}_{video.stem}" for video in self.videos]


@dataclass(frozen=True)
class CaptureReport:
    root: Path
    clips: int
    written: int
    skipped: int
    seconds: float
    notes: tuple[str, ...]

    def summary(self) -> str:
        lines = [f"{self.root}: {self.clips} clips ({self.written} written, {self.skipped} "
                 f"already there) in {self.seconds:.1f} s"]
        return "\n".join(lines + [f"  {note}" for note in self.notes])


def plan_captures(source: PathLike) -> list[CaptureItem]:
    """The phone videos and studio takes under ``source`` (module docstring), sorted;
    ``ValueError`` for an empty or misshapen folder."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"captures folder {source} does not exist")
    unknown = sorted(p.name for p in source.iterdir()
                     if p.is_dir() and p.name not in ("phone", "studio"))
    if unknown:
        raise ValueError(f"{source}: unknown folder(s) {unknown}; expected phone/ and studio/ "
                         "(docs/tracking.md)")
    items = []
    for person in sorted((source / "phone").glob("*")) if (source / "phone").is_dir() else []:
        if not person.is_dir():
            raise ValueError(f"{person}: phone videos go in phone/<identity>/<clip>.mp4")
        for video in sorted(person.glob("*.mp4")):
            items.append(CaptureItem("phone", person.name, video.stem, (video,)))
    studio = source / "studio"
    for person in sorted(studio.glob("*")) if studio.is_dir() else []:
        for take in sorted(p for p in person.glob("*") if p.is_dir()):
            videos = tuple(sorted(take.glob("*.mp4")))
            calibration = [take / name for name in CALIBRATION_NAMES if (take / name).is_file()]
            if len(calibration) != 1:
                raise ValueError(f"studio take {take}: expected one calibration file "
                                 f"({' or '.join(CALIBRATION_NAMES)}), found {len(calibration)}")
            if len(videos) < 2:
                raise ValueError(f"studio take {take}: expected at least 2 view videos, found "
                                 f"{len(videos)}")
            items.append(CaptureItem("studio", person.name, take.name, videos, calibration[0]))
    if not items:
        raise ValueError(f"{source}: no captures found (phone/<identity>/<clip>.mp4 or "
                         "studio/<identity>/<take>/<view>.mp4 with cameras.json)")
    return items


def load_calibration(path: Path, views: tuple[Path, ...], height: int, width: int) -> Cameras:
    """The cameras of ``views`` from a take's calibration file, in the views' order;
    ``ValueError`` naming the file when it does not match them (count, names, image size)."""
    from factorportrait.geometry.formats import load_cameras_json, load_nerf_transforms

    names = [video.stem for video in views]
    try:
        if path.name == "transforms.json":
            cameras = load_nerf_transforms(path, width=width, height=height)
            frames = json.loads(path.read_text()).get("frames", [])
            stems = [Path(str(frame.get("file_path", ""))).stem for frame in frames]
            if sorted(stems) != sorted(names):
                raise ValueError(f"its file_path stems {sorted(stems)} are not the views "
                                 f"{sorted(names)}")
            cameras = cameras[torch.tensor([stems.index(name) for name in names])]
        else:
            cameras = load_cameras_json(path)
    except (TypeError, KeyError) as err:
        raise ValueError(f"calibration {path}: {err}") from err
    except ValueError as err:
        raise ValueError(f"calibration {path}: {err}") from err
    if len(cameras) != len(views):
        raise ValueError(f"calibration {path} has {len(cameras)} cameras for {len(views)} "
                         f"views ({', '.join(names)})")
    if (cameras.width, cameras.height) != (width, height):
        raise ValueError(f"calibration {path} is for {cameras.width}x{cameras.height} images, "
                         f"the videos are {width}x{height}")
    return cameras.to(torch.float64)


def prepare_captures(source: PathLike, root: PathLike, settings: CaptureSettings | None = None,
                     progress: bool = False) -> CaptureReport:
    """Turn the captures under ``source`` into a dataset in ``root`` (module docstring)."""
    settings = settings if settings is not None else CaptureSettings()
    start = time.perf_counter()
    items = plan_captures(source)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    encoder = _encoder(settings.encoder)
    notes, written, total = [], 0, sum(len(item.clip_ids()) for item in items)
    with exclusive(root, LOCK_NAME, TOOL):
        claim_settings(root, SETTINGS_NAME, settings.to_json(), TOOL)
        prepare_folders(root)
        done = listed_ids(root)
        pending = [item for item in items if not set(item.clip_ids()) <= done]
        with FaceTracker(TrackerConfig(fov_deg=settings.fov_deg)) as tracker, \
                tqdm(total=total, initial=total - sum(len(i.clip_ids()) for i in pending),
                     unit="clip", desc=TOOL, disable=not progress) as bar:
            for item in pending:
                prepare = _phone_clip if item.kind == "phone" else _studio_take
                records, note = prepare(item, root, settings, tracker, encoder)
                for record in records:
                    if record.id not in done:
                        append_manifest(root / MANIFEST_NAME, record)
                        written += 1
                    bar.update(1)
                notes.append(note)
    return CaptureReport(root, total, written, total - written, time.perf_counter() - start,
                         tuple(notes))


def _encoder(folder: str | None):
    if folder is None:
        return None
    from factorportrait.inference.loading import expression_encoder_dir, load_expression_encoder

    found = expression_encoder_dir(folder)
    if found is None:
        raise FileNotFoundError(f"encoder {folder}: no expression_encoder.json there")
    return load_expression_encoder(found)


def _fitted_scale(face: FaceTrack, avatar: HeadAvatar, K: Tensor, depths: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """Per frame, the avatar's scale and head centre (camera frame) that put its face points on
    the tracked ones at the given head-centre ``depths (F,)``: ``(F,)``, ``(F, 3)``."""
    points = face_points(face.landmarks)[..., :2]  # (F, 5, 2)
    scales, centres = [], []
    for index in range(len(face)):
        scale, centre = fit_avatar(avatar, points[index], face.pose.rotation[index], K,
                                   float(depths[index]))
        scales.append(scale)
        centres.append(centre)
    return torch.tensor(scales, dtype=torch.float64), torch.stack(centres)


def _normals(avatar: HeadAvatar, scale: float, rotation: Tensor, centre: Tensor,
             cameras: Cameras) -> Tensor:
    """``uint8 (F, H, W, 3)`` normal maps of the fitted avatar (world poses: rotations
    ``(F, 3, 3)``, head centres ``(F, 3)``) seen by ``cameras``."""
    source = HeadMeshSource(avatar, scale)
    axis_angle = matrix_to_axis_angle(rotation)
    out = []
    for start in range(0, len(cameras), RENDER_CHUNK):
        part = slice(start, start + RENDER_CHUNK)
        track = ControlTrack(head_rotation=axis_angle[part].float(),
                             head_translation=centre[part].float())
        maps = render_normal_maps(source, track, cameras[part].to(torch.float32),
                                  cameras.height, cameras.width)
        out.append((maps.permute(0, 2, 3, 1) * 255).round().byte())
    return torch.cat(out)


def _write_clip(root: Path, record: ClipRecord, frames: Tensor, normals: Tensor,
                annotations: ClipAnnotations) -> None:
    height, width = frames.shape[1:3]
    even = (slice(None), slice(0, height - height % 2), slice(0, width - width % 2))
    write_video(record.resolve(root, "video"), frames[even], fps=record.fps)
    write_video(record.resolve(root, "normals"), normals[even], fps=record.fps, lossless=True)
    save_annotations(record.resolve(root, "annotations"), annotations)


def _record(clip_id: str, kind: str, item: CaptureItem, settings: CaptureSettings, fps: float,
            frames: int, take: str | None = None) -> ClipRecord:
    return ClipRecord(id=clip_id, kind=kind, identity=item.identity, fps=fps,
                      video=f"videos/{clip_id}.mp4", annotations=f"annotations/{clip_id}"
                      ".safetensors", normals=f"normals/{clip_id}.mp4", take=take,
                      split="heldout" if item.identity in settings.heldout else "train",
                      num_frames=frames)


def _phone_clip(item: CaptureItem, root: Path, settings: CaptureSettings, tracker: FaceTracker,
                encoder) -> tuple[list[ClipRecord], str]:
    loaded = load_video(item.videos[0], settings.max_frames, "phone video")
    frames = loaded.frames
    count, height, width = frames.shape[:3]
    even_h, even_w = height - height % 2, width - width % 2
    K = tracker.intrinsics(height, width)
    face = tracker.track(frames, loaded.fps, name=f"phone video {item.videos[0]}")
    avatar = HeadAvatar(AvatarIdentity())
    scales, centres = _fitted_scale(face, avatar, K, face.head_translation[:, 2].double())
    scale = float(scales.median())
    centres = centres * (scale / scales)[:, None]  # one scale for the clip, same projection
    rotation = face.pose.rotation.double()
    cameras = Cameras(K[None].expand(count, 3, 3).clone(), torch.eye(4, dtype=torch.float64)
                      .expand(count, 4, 4).clone(), even_w, even_h)
    normals = _normals(avatar, scale, rotation, centres, cameras)
    record = _record(item.take, "phone", item, settings, loaded.fps, count)
    codes = None if encoder is None else tracked_codes(encoder, frames, face.boxes,
                                                       landmarks=face.landmarks)
    annotations = ClipAnnotations(
        K=cameras.K.float(), c2w=cameras.c2w.float(),
        head_rotation=matrix_to_axis_angle(rotation).float(), head_translation=centres.float(),
        width=even_w, height=even_h, fps=loaded.fps, kind="phone", expression_codes=codes,
        mesh={"avatar_scale": torch.full((count, 1), scale)})
    _write_clip(root, record, frames, normals, annotations)
    note = face.report.summary() + (f"; {loaded.note()}" if loaded.resampled else "")
    return [record], note


def _studio_take(item: CaptureItem, root: Path, settings: CaptureSettings,
                 tracker: FaceTracker, encoder) -> tuple[list[ClipRecord], str]:
    loaded = [load_video(video, settings.max_frames, "studio view") for video in item.videos]
    counts = {video.stem: len(view.frames) for video, view in zip(item.videos, loaded)}
    if len(set(counts.values())) > 1:
        raise ValueError(f"studio take {item.videos[0].parent}: the views have different "
                         f"frame counts {counts}; they must be synchronised")
    height, width = loaded[0].frames.shape[1:3]
    if any(tuple(view.frames.shape[1:3]) != (height, width) for view in loaded):
        raise ValueError(f"studio take {item.videos[0].parent}: the views differ in size")
    cameras = load_calibration(item.calibration, item.videos, height, width)
    count, fps = len(loaded[0].frames), loaded[0].fps
    faces = [tracker.track(view.frames, fps, name=f"studio view {video}", K=cameras.K[v])
             for v, (video, view) in enumerate(zip(item.videos, loaded))]
    rotation, centre = _fuse_views(faces, cameras)  # (F, 3, 3), (F, 3) world
    avatar = HeadAvatar(AvatarIdentity())
    w2c = cameras.world_to_camera()  # (V, 4, 4)
    scales = []
    for v, face in enumerate(faces):
        depth = (centre @ w2c[v, :3, :3].T + w2c[v, :3, 3])[:, 2]
        scales.append(_fitted_scale(face, avatar, cameras.K[v], depth)[0])
    scale = float(torch.cat(scales).median())
    records = []
    even_h, even_w = height - height % 2, width - width % 2
    for v, (video, view, face) in enumerate(zip(item.videos, loaded, faces)):
        clip_id = f"{item.take}_{video.stem}"
        view_cameras = Cameras(cameras.K[v:v + 1].expand(count, 3, 3).clone(),
                               cameras.c2w[v:v + 1].expand(count, 4, 4).clone(), even_w, even_h)
        normals = _normals(avatar, scale, rotation, centre, view_cameras)
        codes = None if encoder is None else tracked_codes(encoder, view.frames, face.boxes,
                                                          landmarks=face.landmarks)
        annotations = ClipAnnotations(
            K=view_cameras.K.float(), c2w=view_cameras.c2w.float(),
            head_rotation=matrix_to_axis_angle(rotation).float(),
            head_translation=centre.float(), width=even_w, height=even_h, fps=fps,
            kind="studio", expression_codes=codes,
            mesh={"avatar_scale": torch.full((count, 1), scale)})
        record = _record(clip_id, "studio", item, settings, fps, count, take=item.take)
        _write_clip(root, record, view.frames, normals, annotations)
        records.append(record)
    return records, f"studio take {item.take}: {len(faces)} views, {count} frames"


def _fuse_views(faces: list[FaceTrack], cameras: Cameras) -> tuple[Tensor, Tensor]:
    """The head's world pose per frame, ``(F, 3, 3)``, ``(F, 3)`` float64: started from the
    views' mean rotation (each taken to the world) and their triangulated images of the head
    centre, then fitted to every view's landmarks at once
    (:func:`~factorportrait.tracking.pose.fit_multiview_pose`)."""
    c2w = cameras.c2w.double()  # (V, 4, 4)
    quats = torch.stack([matrix_to_quaternion(c2w[v, :3, :3] @ face.pose.rotation.double())
                         for v, face in enumerate(faces)])  # (V, F, 4)
    signs = torch.sign((quats * quats[:1]).sum(-1, keepdim=True))
    signs[signs == 0] = 1
    rotation = quaternion_to_matrix((quats * signs).mean(0))
    w2c = cameras.world_to_camera().double()
    image = torch.stack([face.pose.center.double() for face in faces])  # (V, F, 2)
    centre = triangulate(image, w2c[:, :3, :3], w2c[:, :3, 3], cameras.K)  # (F, 3)
    landmarks = torch.stack([face.landmarks for face in faces])  # (V, F, 478, 3)
    seen = torch.stack([face.detected.double() for face in faces]) * 0.9 + 0.1
    return fit_multiview_pose(landmarks, w2c, cameras.K, rotation, centre, seen)


__all__ = ["CaptureItem", "CaptureReport", "CaptureSettings", "load_calibration",
           "plan_captures", "prepare_captures"]
