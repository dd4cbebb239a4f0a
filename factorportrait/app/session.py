"""The web app's work, without the web page: one form of inputs -> the conditions preview, the
render and its downloads, through the public pipeline (``FactorPortraitPipeline.render``,
``preview_conditions``, ``plan_track``) and nothing re-implemented.

:class:`Renderer` loads the checkpoint once, on the first render, and renders one request at
a time (a lock around the model; the page also queues requests). Each render writes a folder
``<output_dir>/<time>-<n>/`` with ``render.mp4``, ``controls.safetensors`` (the per-frame
controls it used, reusable with ``--control-track``) and ``contact_sheet.png``, all written
atomically. Bad inputs raise ``ValueError``/``FileNotFoundError`` with the same one-line
messages as ``factorportrait-render``.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from factorportrait.diffusion.guidance import Guidance
from factorportrait.geometry.trajectories import TRAJECTORY_PRESETS
from factorportrait.inference.controls import CONTROL_MODES, MODE_FACTORS
from factorportrait.inference.inputs import DEFAULT_FRAMES, preset_trajectory

LOG = logging.getLogger(__name__)
# The preset parameters the page has a control for; others go in the free ``extra`` field.
PRESET_FIELDS = ("degrees", "yaw_deg", "elevation_deg", "distance", "end_distance", "easing")


@dataclass(frozen=True)
class RenderForm:
    """Every input of the page. Paths are uploaded files (None: not given).

    ``frames`` None (or 0) takes the sources' length, else the checkpoint's training length.
    ``params`` holds the preset parameters of :data:`PRESET_FIELDS` (those the preset does not
    take are ignored); ``extra`` more of them as ``key=value, key=value``. ``camera_file``
    replaces the preset.
    """

    portrait: Optional[str] = None
    demo_identity: bool = False
    driving_video: Optional[str] = None
    control_track: Optional[str] = None
    expression_track: Optional[str] = None
    pose_track: Optional[str] = None
    mode: str = "driving"
    trajectory: str = "orbit"
    params: dict[str, Any] = field(default_factory=dict)
    extra: str = ""
    camera_file: Optional[str] = None
    frames: Optional[int] = None
    steps: int = 20
    guidance: str = "none"
    guidance_scale: float = 1.0
    seed: int = 0
    paste_back: bool = False


@dataclass(frozen=True, eq=False)
class DemoIdentity:
    """The demo's held-out identity: its frontal frame as the reference image ``(3, S, S)`` in
    [-1, 1] (``photo``: ``uint8 (S, S, 3)``), the frame's 1-frame control track (camera, head
    pose, expression code) and the avatar mesh that renders its pose."""

    image: Tensor
    photo: np.ndarray
    reference: Any
    mesh_source: Any
    name: str


@dataclass(frozen=True)
class AppResult:
    """One finished render: the files it wrote and a one-line summary."""

    video: Path
    track: Path
    sheet: Path
    num_frames: int
    message: str


def preset_defaults(name: str) -> dict[str, Any]:
    """The defaults of preset ``name``'s parameters in :data:`PRESET_FIELDS`."""
    if name not in TRAJECTORY_PRESETS:
        raise ValueError(f"camera trajectory preset {name!r}: expected one of "
                         f"{', '.join(TRAJECTORY_PRESETS)}")
    signature = inspect.signature(TRAJECTORY_PRESETS[name]).parameters
    return {key: signature[key].default for key in PRESET_FIELDS if key in signature}


def parse_extra(text: str) -> dict[str, Any]:
    """``"end_focal=300, target=0"`` -> ``{"end_focal": 300, ...}`` (numbers where they parse)."""
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.replace(";", ",").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"camera parameters: expected key=value, got {item!r}")
        value = value.strip()
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                pass
        params[key.strip().replace("-", "_")] = value
    return params


def trajectory_input(form: RenderForm) -> Any:
    """What the pipeline takes as ``camera_trajectory``: None for modes that keep the reference
    camera, the camera file, or ``(preset, params)``."""
    if form.mode not in MODE_FACTORS:
        raise ValueError(f"mode {form.mode!r}: expected one of {', '.join(CONTROL_MODES)}")
    if MODE_FACTORS[form.mode].camera == "reference":
        return None
    if form.camera_file:
        return Path(form.camera_file)
    allowed = preset_defaults(form.trajectory)
    params = {key: value for key, value in form.params.items()
              if key in allowed and value is not None}
    return (form.trajectory, {**params, **parse_extra(form.extra)})


def plot_cameras(form: RenderForm, frames: int, height: int, width: int) -> np.ndarray:
    """The trajectory of ``form`` (its camera file or preset with parameters) as a 3D plot,
    ``uint8 (H, W, 3)``: frusta coloured by frame, the path of the centres, the target."""
    from PIL import Image

    from factorportrait.geometry.formats import load_cameras
    from factorportrait.geometry.plot import plot_trajectory

    if form.camera_file:
        try:
            cameras = load_cameras(form.camera_file, width=width, height=height)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"camera file: {err}") from err
        title = f"{Path(form.camera_file).name}: {len(cameras)} cameras"
    else:
        cameras = preset_trajectory(trajectory_input(replace(form, mode="camera_only")),
                                    frames, height, width)
        title = f"{form.trajectory}: {frames} frames"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trajectory.png"
        plot_trajectory(cameras.to(torch.float64), path, title=title, dpi=80)
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))


def _heldout_phone_clip(checkpoint: Path, position: int, what: str):
    """The phone clip of the demo recipe's held-out identity at ``position`` (0: the
    subject, -1: the driver), with the checkpoint's expression codes -> ``(recipe, synthetic
    config, identity index, clip)``. ``what`` names the request in the error of a checkpoint
    without ``demo.json``."""
    from omegaconf import OmegaConf

    from factorportrait.demo.heldout import heldout_identities, heldout_spec, render_heldout
    from factorportrait.demo.train import synthetic_config

    record = checkpoint / "demo.json"
    if not record.is_file():
        raise ValueError(f"checkpoint {checkpoint} has no demo.json: the {what} comes with "
                         "the demo checkpoint (checkpoints/demo, `make demo-train`)")
    config = OmegaConf.create(json.loads(record.read_text())["recipe"])
    synth = synthetic_config(config)
    identity = heldout_identities(synth)[position]
    clip = render_heldout(synth, heldout_spec(synth, identity, "phone", 0), config.size,
                          _code_source(checkpoint))
    return config, synth, identity, clip


def load_demo_identity(checkpoint: Path) -> DemoIdentity:
    """The first held-out identity of the demo checkpoint's recipe (``demo.json``), as
    ``make demo`` shows it: its phone clip's most frontal frame."""
    from factorportrait.data.synthetic import make_avatar
    from factorportrait.inference.mesh_sources import AvatarMeshSource

    _, synth, subject, clip = _heldout_phone_clip(checkpoint, 0, "demo identity")
    index = clip.frontal_frame()
    photo = clip.rgb[index]
    return DemoIdentity(photo.permute(2, 0, 1).float() / 127.5 - 1, photo.numpy(),
                        clip.track[[index]], AvatarMeshSource(make_avatar(synth, subject)),
                        clip.id)


def _code_source(checkpoint: Path):
    """The checkpoint's expression encoder as a code source for whole frames, or None."""
    from factorportrait.expression.codes import EncoderCodeSource
    from factorportrait.models.expression_encoder import ExpressionEncoder

    if not (checkpoint / "expression_encoder.safetensors").is_file():
        return None
    return EncoderCodeSource(ExpressionEncoder.from_pretrained(checkpoint))


def write_demo_driver(checkpoint: Path, path: Path) -> Path:
    """The other held-out identity's phone clip as a control track at ``path`` (the driver of
    ``make demo``)."""
    from factorportrait.inference.control_track import save_control_track

    config, _, _, clip = _heldout_phone_clip(checkpoint, -1, "demo driver")
    save_control_track(clip.track[:config.render.frames].replace(
        fps=float(config.render.fps)), path)
    return path


class Renderer:
    """The app's model and its outputs: one checkpoint, loaded on first use, one render at a
    time.

    Args:
        checkpoint: a FactorPortrait checkpoint folder (checked now, weights read later).
        output_dir: where each render's folder is written.
        load: keyword arguments of ``FactorPortraitPipeline.from_pretrained`` (device, dtype,
            vae_path, lora, lora_scale; expression_encoder and pose_encoder components).
    """

    def __init__(self, checkpoint: str | Path, output_dir: str | Path, **load: Any) -> None:
        from factorportrait.models.weights import read_config, read_trained

        self.checkpoint = Path(checkpoint)
        read_config(self.checkpoint)  # a missing or broken checkpoint is named at start-up
        self.trained = read_trained(self.checkpoint)
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.load = load
        self.defaults = _render_defaults(self.checkpoint)
        self.intervals: list[tuple[float, float]] = []  # (start, end) of every render
        self._lock = threading.Lock()
        self._pipeline = None
        self._demo: Optional[DemoIdentity] = None
        self._count = 0

    @property
    def size(self) -> tuple[int, int]:
        """The checkpoint's training ``(height, width)`` (512 × 512 when it records none)."""
        return int(self.trained.get("height", 512)), int(self.trained.get("width", 512))

    @property
    def default_frames(self) -> int:
        return int(self.trained.get("frames", DEFAULT_FRAMES))

    def pipeline(self):
        """The loaded pipeline (read from the checkpoint the first time)."""
        from factorportrait.pipeline import FactorPortraitPipeline

        if self._pipeline is None:
            start = time.perf_counter()
            self._pipeline = FactorPortraitPipeline.from_pretrained(self.checkpoint, **self.load)
            LOG.info("loaded %s in %.1f s", self.checkpoint, time.perf_counter() - start)
        return self._pipeline

    def demo_identity(self) -> DemoIdentity:
        if self._demo is None:
            self._demo = load_demo_identity(self.checkpoint)
        return self._demo

    def demo_driver(self) -> Path:
        """The demo's driving control track, written once under ``output_dir``."""
        path = self.output_dir / "demo_driver.safetensors"
        return path if path.is_file() else write_demo_driver(self.checkpoint, path)

    def inputs(self, form: RenderForm) -> tuple[Any, dict[str, Any]]:
        """``form`` -> the reference image and the pipeline's keyword inputs."""
        check_sampling(form)
        inputs = dict(mode=form.mode, camera_trajectory=trajectory_input(form),
                      driving_video=form.driving_video or None,
                      control_track=form.control_track or None,
                      pose_source=form.pose_track or None,
                      expression_source=form.expression_track or None,
                      num_frames=form.frames or None)
        if form.demo_identity:
            if form.paste_back:
                raise ValueError("paste_back: the demo identity has no full photo to paste "
                                 "into (upload a photo, or render without paste-back)")
            identity = self.demo_identity()
            return identity.image, {**inputs, "reference": identity.reference}
        if not form.portrait:
            raise ValueError("portrait: upload a portrait image (PNG or JPEG) or pick the "
                             "demo identity")
        return form.portrait, inputs

    def preview(self, form: RenderForm, path: Optional[Path] = None) -> np.ndarray:
        """The conditions' contact sheet, with no weights read (``--preview``)."""
        from factorportrait.cli.render import with_trained_defaults
        from factorportrait.inference.faces import resolve_faces
        from factorportrait.inference.inputs import check_render_inputs
        from factorportrait.inference.preview import preview_conditions
        from factorportrait.tracking import FaceTracker

        reference, inputs = self.inputs(form)
        mesh_source = self.demo_identity().mesh_source if form.demo_identity else None
        request = check_render_inputs(reference, **with_trained_defaults(inputs,
                                                                         str(self.checkpoint)))
        if request.reference_crop == "face" or request.driving_video is not None:
            resolve_faces(request, FaceTracker(), None, mesh_source,
                          pose_encoder=self.load.get("pose_encoder"))
        return preview_conditions(request, request.mesh_source or mesh_source, path)

    def render(self, form: RenderForm, progress: bool = True) -> AppResult:
        """Render ``form``; returns the written files. One render at a time."""
        from factorportrait.inference.control_track import save_control_track
        from factorportrait.inference.controls import plan_track, render_plan_normals
        from factorportrait.inference.preview import contact_sheet

        reference, inputs = self.inputs(form)
        guidance = Guidance(form.guidance, form.guidance_scale)
        with self._lock:
            start = time.perf_counter()
            try:
                pipe = self.pipeline()
                pipe.mesh_source = self.demo_identity().mesh_source if form.demo_identity \
                    else None
                folder = self._new_folder()
                try:
                    result = pipe.render(reference, **inputs, num_steps=form.steps,
                                         guidance=guidance, seed=form.seed,
                                         output_path=folder / "render.mp4",
                                         paste_back=form.paste_back, progress=progress)
                except BaseException:
                    shutil.rmtree(folder, ignore_errors=True)  # nothing was written
                    raise
                request, plan = result.request, result.plan
                save_control_track(plan_track(plan, request.fps, "factorportrait-app"),
                                   folder / "controls.safetensors")
                normals = render_plan_normals(plan, request.mesh_source or pipe.mesh_source,
                                              request.height, request.width)
                contact_sheet(plan, request.reference_image, normals,
                              folder / "contact_sheet.png")
            finally:
                self.intervals.append((start, time.perf_counter()))
        frames = result.frames
        seconds = self.intervals[-1][1] - self.intervals[-1][0]
        message = (f"wrote {folder / 'render.mp4'}: {frames.shape[0]} frames, "
                   f"{frames.shape[2]}x{frames.shape[1]} ({seconds:.1f} s)")
        return AppResult(folder / "render.mp4", folder / "controls.safetensors",
                         folder / "contact_sheet.png", int(frames.shape[0]), message)

    def _new_folder(self) -> Path:
        self._count += 1
        folder = self.output_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{self._count:03d}"
        folder.mkdir(parents=True, exist_ok=False)
        return folder


def check_sampling(form: RenderForm) -> None:
    """Steps, seed and guidance, checked before anything is tracked or loaded (the CLI's
    messages)."""
    if isinstance(form.steps, bool) or not isinstance(form.steps, int) or form.steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {form.steps!r}")
    if isinstance(form.seed, bool) or not isinstance(form.seed, int) or \
            not 0 <= form.seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {form.seed!r}")
    try:
        Guidance(form.guidance, form.guidance_scale)
    except ValueError as err:
        raise ValueError(f"guidance: {err}") from None


def _render_defaults(checkpoint: Path) -> dict[str, Any]:
    """Steps, guidance and seed the checkpoint's ``demo.json`` renders with, else the
    pipeline's defaults."""
    from factorportrait.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS

    defaults = dict(steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE.mode,
                    guidance_scale=DEFAULT_GUIDANCE.scale, seed=0)
    record = checkpoint / "demo.json"
    if record.is_file():
        render = json.loads(record.read_text()).get("recipe", {}).get("render", {})
        defaults.update(steps=render.get("steps", defaults["steps"]),
                        guidance=render.get("guidance") or "none",
                        guidance_scale=render.get("guidance_scale", 1.0),
                        seed=render.get("seed", 0))
    return defaults
