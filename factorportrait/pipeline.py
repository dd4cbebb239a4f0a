"""FactorPortraitPipeline: one portrait image + controls -> a video (FactorPortrait §4, Fig. 2).

Numbered steps of :meth:`FactorPortraitPipeline.render` (docs/pipeline.md; ``__call__``
returns its frames):

    1. check inputs          everything cheap, before any heavy work (inference/inputs.py)
    2. faces                 the reference's portrait crop, pose and fitted avatar; a driving
                             video tracked, its codes and head motion (inference/faces.py)
    3. per-frame controls    codes, cameras and mesh pose of the mode (inference/controls.py)
    4. pose condition        normal maps rendered from the meshes, VAE-encoded
    5. conditions            reference latent, Plücker rays, text context -> PortraitConditions
    6. denoise               Euler flow sampling; guidance branches batched in one forward;
                             sliding windows for long videos (inference/long_video.py)
    7. decode                VAE (optionally tiled) -> uint8 frames; optional paste-back into
                             the photo (tracking/crop.py); optional atomic mp4
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import Tensor

from factorportrait.diffusion.flow_matching import DEFAULT_SHIFT
from factorportrait.diffusion.guidance import Guidance
from factorportrait.diffusion.sampler import resolve_guidance
from factorportrait.inference.control_track import ControlTrack
from factorportrait.inference.controls import (MODE_FACTORS, ControlPlan, assemble_conditions,
                                               mesh_landmarks, pad_codes, plan_controls,
                                               render_plan_normals)
from factorportrait.inference.encoders import ExpressionEncoder, encode_expressions
from factorportrait.inference.inputs import RenderRequest, check_render_inputs, load_normal_maps
from factorportrait.inference.long_video import latent_frames, plan_windows, sample_windows
from factorportrait.inference.mesh_sources import MeshSource
from factorportrait.io.video import write_video
from factorportrait.models.conditions import PortraitConditions, check_required

LOGGER = logging.getLogger(__name__)
DEFAULT_GUIDANCE = Guidance("progressive_hybrid", 2.5)  # DeX-Portrait Eq. 5, ω = 2.5
DEFAULT_STEPS = 35  # DeX-Portrait's step count; its 5/5/25 split scales to any count
WINDOW_FRAMES = 81  # the longest training clips (curriculum stage 4)
WINDOW_OVERLAP = 16  # video frames shared by consecutive windows (4 latent frames)


@dataclass(frozen=True, eq=False)
class RenderResult:
    """What :meth:`FactorPortraitPipeline.render` made: ``frames`` (``uint8 (F, H, W, 3)``,
    pasted back when asked), the checked ``request`` (after step 2: the portrait crop, the
    fitted mesh source) and the ``plan`` of per-frame controls (its :func:`~factorportrait.
    inference.controls.plan_track` is a reusable control track)."""

    frames: Tensor
    request: RenderRequest
    plan: ControlPlan


def check_windows(window_frames: int, window_overlap: int, vae_tile: Optional[int]) -> None:
    """The sliding-window and VAE-tile settings (``ValueError`` naming them)."""
    if window_frames < 5 or (window_frames - 1) % 4 or \
            latent_frames(window_frames) <= window_overlap // 4 or window_overlap % 4 \
            or window_overlap < 0:
        raise ValueError(f"window_frames (--window-frames) must be 4k + 1 >= 5 and "
                         f"window_overlap (--window-overlap) a multiple of 4 below "
                         f"window_frames - 1, got {window_frames}, {window_overlap}")
    if vae_tile is not None and (vae_tile <= 0 or vae_tile % 64):
        raise ValueError(f"vae_tile (--vae-tile) must be a positive multiple of 64 pixels, got "
                         f"{vae_tile}")


class FactorPortraitPipeline:
    """Animate a portrait from expression, pose and camera controls.

    Components:
        dit: a :class:`~factorportrait.models.dit.FactorPortraitDiT`.
        vae: a :class:`~factorportrait.models.vae.WanVAE`.
        mesh_source: renders the pose condition (``AvatarMeshSource``, ``SMPLXMeshSource``);
            without one the pose condition is dropped (zero normal latents) unless
            ``normal_maps`` are given.
        expression_encoder: frames ``(N,3,H,W)`` in [-1,1] -> codes ``(N,D)``; needed for a
            driving video without codes (:mod:`factorportrait.inference.encoders`). An
            :class:`~factorportrait.expression.EncoderCodeSource` (what ``from_pretrained``
            loads) is given the tracked face boxes, a source with ``needs_landmarks`` (the
            motion trainer's :class:`~factorportrait.motion.sources.MotionExpressionSource`)
            the tracked landmarks.
        pose_encoder: ``(frames, landmarks) -> RTS (N, 3, 4)``, e.g. the motion trainer's
            :class:`~factorportrait.motion.sources.MotionPoseSource`: a driving video's head
            pose is read by it instead of the tracker's landmark fit (docs/motion.md).
        face_tracker: a :class:`~factorportrait.tracking.FaceTracker` (made on first use).
        trained_size: ``(height, width)`` the DiT was trained at: the default output size
            (``from_pretrained`` reads it from the checkpoint).
        text_encoder: ``prompt -> (1, L, text_dim)`` (:func:`~factorportrait.inference.loading.
            load_text_encoder`); without one the DiT's null context is used.
        window_frames, window_overlap: sliding windows (video frames) for long videos.
        vae_tile: spatial VAE tile in pixels (multiple of 64), or None for whole frames.
    """

    def __init__(self, dit: torch.nn.Module, vae: torch.nn.Module, *,
                 mesh_source: Optional[MeshSource] = None,
                 expression_encoder: Optional[ExpressionEncoder] = None,
                 text_encoder: Optional[Any] = None, window_frames: int = WINDOW_FRAMES,
                 window_overlap: int = WINDOW_OVERLAP, vae_tile: Optional[int] = None,
                 normal_supersample: int = 1, face_tracker: Optional[Any] = None,
                 trained_size: Optional[tuple[int, int]] = None,
                 pose_encoder: Optional[Any] = None) -> None:
        check_windows(window_frames, window_overlap, vae_tile)
        self.pose_encoder = pose_encoder
        self.dit, self.vae = dit.eval(), vae.eval()
        self.mesh_source, self.expression_encoder = mesh_source, expression_encoder
        self.text_encoder = text_encoder
        self.window_frames, self.window_overlap = window_frames, window_overlap
        self.vae_tile, self.normal_supersample = vae_tile, normal_supersample
        self.face_tracker, self.trained_size = face_tracker, trained_size
        self.trained_frames: Optional[int] = None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *,
                        vae_path: Optional[str | os.PathLike] = None,
                        preset: Optional[str] = None, device: str | torch.device = "cpu",
                        dtype: Optional[torch.dtype] = None,
                        text_encoder_path: Optional[str | os.PathLike] = None,
                        tokenizer_path: Optional[str | os.PathLike] = None,
                        lora: Sequence[str | os.PathLike] = (),
                        lora_scale: Optional[Sequence[float]] = None,
                        **components: Any) -> "FactorPortraitPipeline":
        """Load every component a checkpoint directory ships: the DiT (``config.json`` +
        ``model.safetensors``), the VAE (``vae_config.json`` + ``vae.safetensors``, or
        ``vae_path`` to ``Wan2.1_VAE.pth``) and, when present, the expression encoder
        (``expression_encoder.json`` + ``.safetensors``, used on roll-normalised tracked face
        crops). Every file is checked before any weights are read; ``preset`` (``tiny``,
        ``wan_1_3b``, ``wan_14b``) also checks the architecture. The training size recorded
        in ``config.json`` becomes the default output size. ``lora``: adapter files
        (``adapter.safetensors``) merged into the DiT, each scaled by its ``lora_scale``
        (default 1), so inference runs a plain model (:mod:`factorportrait.training.lora`)."""
        from factorportrait.inference import loading
        from factorportrait.models.dit import FactorPortraitDiT
        from factorportrait.models.weights import read_trained

        loading.check_checkpoint(directory, preset)
        vae_source = loading.resolve_vae_source(directory, vae_path)
        if (text_encoder_path is None) != (tokenizer_path is None):
            raise ValueError("text_encoder_path and tokenizer_path go together")
        text_encoder = None
        if text_encoder_path is not None:
            text_encoder = loading.load_text_encoder(text_encoder_path, tokenizer_path, device)
        encoder_dir = loading.expression_encoder_dir(directory)
        if lora:
            from factorportrait.models.weights import read_config
            from factorportrait.training.lora import check_adapters, merge_adapters
            check_adapters(lora, lora_scale, read_config(directory))
        dit = FactorPortraitDiT.from_pretrained(directory, map_location=device)
        dit = merge_adapters(dit, lora, lora_scale) if lora else dit
        vae = loading.load_vae(vae_source).to(device)
        if encoder_dir is not None and "expression_encoder" not in components:
            components["expression_encoder"] = loading.load_expression_encoder(encoder_dir,
                                                                                device)
        trained = read_trained(directory)
        if trained.get("height") and trained.get("width"):
            components.setdefault("trained_size", (trained["height"], trained["width"]))
        pipe = cls(dit.to(dtype=dtype) if dtype else dit, vae, text_encoder=text_encoder,
                   **components)
        pipe.trained_frames = trained.get("frames")
        return pipe

    def to(self, device: str | torch.device | None = None,
           dtype: Optional[torch.dtype] = None) -> "FactorPortraitPipeline":
        """Move the DiT (and cast it to ``dtype``) and the VAE (kept float32) to ``device``."""
        self.dit.to(device=device, dtype=dtype)
        self.vae.to(device=device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the DiT computes (its first parameter's device: with block offload the
        resident part's)."""
        return next(self.dit.parameters()).device

    def enable_sequence_parallel(self, group: Any = None, mode: str = "auto") -> Any:
        """Split the DiT's token sequence over the ranks of ``group`` (default: every rank of
        the launched job, e.g. ``torchrun --nproc_per_node N``): Ulysses or all-gather
        attention (``training/sequence_parallel.py``). Every rank renders the same video;
        write it from rank 0."""
        from factorportrait.training import sequence_parallel

        return sequence_parallel.install(self.dit, group, mode)

    def enable_block_offload(self, resident: int, device: str | torch.device | None = None
                             ) -> Any:
        """Keep ``resident`` DiT blocks on ``device`` (default: the DiT's) and stream the
        others from host memory for their turn (:mod:`~factorportrait.inference.offload`)."""
        from factorportrait.inference.offload import enable_block_offload

        return enable_block_offload(self.dit, resident, device or self.device)

    # ------------------------------------------------------------------ call

    def __call__(self, reference_image: Any, **inputs: Any) -> Tensor:
        """Render a video; returns ``uint8 (F, H, W, 3)`` frames (and writes ``output_path``).
        The keyword inputs are :meth:`render`'s."""
        return self.render(reference_image, **inputs).frames

    def render(self, reference_image: Any, *, mode: str = "driving",
                 camera_trajectory: Any = None, driving_video: Any = None,
                 control_track: Any = None, expression_codes: Optional[Tensor] = None,
                 pose_source: Any = None, expression_source: Any = None,
                 normal_maps: Any = None, reference: Optional[ControlTrack] = None,
                 prompt: Optional[str] = None, num_frames: Optional[int] = None,
                 height: Optional[int] = None, width: Optional[int] = None,
                 num_steps: int = DEFAULT_STEPS, guidance: Guidance | str | None = DEFAULT_GUIDANCE,
                 seed: int = 0, shift: float = DEFAULT_SHIFT, batch_cfg: bool = True,
                 output_path: Optional[str | os.PathLike] = None, fps: Optional[float] = None,
                 reference_crop: str = "auto", paste_back: bool = False,
                 lossless: bool = False, progress: bool = True) -> RenderResult:
        """Render a video -> :class:`RenderResult`: ``uint8 (F, H, W, 3)`` frames (also written
        to ``output_path``), the checked request and the per-frame control plan.

        Inputs (docs/pipeline.md): ``reference_image`` (path, ``uint8 (H,W,3)`` or float
        ``(3,H,W)`` in [-1,1]); ``mode`` (:data:`~factorportrait.inference.CONTROL_MODES`);
        ``camera_trajectory`` (Cameras, camera file, preset name or ``(name, params)``);
        ``driving_video`` (path or ``uint8 (F,H,W,3)``: tracked for the head pose and the
        expression codes a control track lacks) and/or ``control_track`` (ControlTrack or
        ``.safetensors``); ``expression_codes (F, D)``; ``pose_source`` /
        ``expression_source`` for ``mixed``; ``normal_maps`` (``(F,3,H,W)`` in [0,1] or a
        video); ``reference`` (1-frame track: reference camera, pose, expression code).
        ``num_frames`` defaults to the sources' length; ``height``/``width`` to the
        checkpoint's training size (else the image's). ``reference_crop``: ``"face"`` (a
        portrait crop around the tracked face, with the avatar fitted to it), ``"center"``, or
        ``"auto"`` (``"center"`` with a ``reference`` track, else ``"face"``, falling back to
        the centre crop when no face is found and none is needed). ``paste_back``: return
        (and write) the frames pasted into the full reference photo (docs/tracking.md).
        ``lossless``: write ``output_path`` as exact RGB (``libx264rgb -qp 0``; for evaluation
        and comparisons, since H.264's lossy block decisions can flip on a 1-level change),
        instead of the default ``yuv420p`` that every player reads.
        """
        self.timings = {}
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"seed (--seed) must be an integer in [0, 2^63), got {seed!r}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps (--steps) must be an integer >= 1, got {num_steps!r}")
        guidance = resolve_guidance(guidance)
        # 1. Check inputs (nothing heavy happens before this has passed)
        request = self.check_inputs(
            reference_image, mode=mode, camera_trajectory=camera_trajectory,
            driving_video=driving_video, control_track=control_track,
            expression_codes=expression_codes, pose_source=pose_source,
            expression_source=expression_source, normal_maps=normal_maps, reference=reference,
            prompt=prompt, num_frames=num_frames, height=height, width=width, fps=fps,
            output_path=output_path, reference_crop=reference_crop)
        # 2. Faces: the reference's portrait crop and fitted avatar; the driving video tracked
        with self._timed("faces"):
            self.faces(request, progress=progress)
        # 3. Per-frame controls of the mode: codes, cameras, mesh pose
        with self._timed("conditions"):
            plan = self.plan(request)
        # 4-5. Pose condition, reference latent, rays, text -> PortraitConditions
        conditions = self.encode_conditions(request, plan, prompt)
        # 6. Denoise
        with self._timed("dit"):
            latents = self.denoise(conditions, num_steps=num_steps, guidance=guidance,
                                   seed=seed, shift=shift, batch_cfg=batch_cfg,
                                   progress=progress)
        # 7. Decode, paste back (and write the mp4 atomically: a failed render leaves no file)
        with self._timed("vae"):
            frames = self.decode(latents)
        if paste_back:
            frames = self.paste_back(request, frames)
        if request.output_path is not None:
            write_video(request.output_path, frames, fps=request.fps, lossless=lossless)
        return RenderResult(frames, request, plan)

    # ------------------------------------------------------------------ 1. check inputs

    def check_inputs(self, reference_image: Any, *, prompt: Optional[str] = None,
                     **inputs: Any) -> RenderRequest:
        """Step 1: validate every input (:func:`~factorportrait.inference.inputs.
        check_render_inputs`) and that the components can serve it. Without ``height`` and
        ``width`` the render takes the checkpoint's training size; another size is allowed
        with a warning naming both."""
        inputs = self._default_size(inputs)
        if self.trained_frames is not None:
            inputs.setdefault("default_frames", self.trained_frames)
        request = check_render_inputs(reference_image, **inputs)
        self._check_memory(request)
        factors = MODE_FACTORS[request.mode]
        if factors.expression == "driving":
            track = request.expression_source if request.mode == "mixed" and \
                request.expression_source is not None else request.driving
            has_codes = track is not None and track.expression_codes is not None
            if not has_codes and (request.driving_video is None
                                  or self.expression_encoder is None):
                raise ValueError(
                    f"mode {request.mode!r} takes the expression from the driving performance, "
                    "but it has no expression codes: give a control_track with "
                    "expression_codes, expression_codes=(F, 128), or a driving_video together "
                    "with an expression_encoder component")
        if prompt is not None and self.text_encoder is None:
            raise ValueError("prompt needs a text encoder: FactorPortraitPipeline.from_pretrained("
                             "..., text_encoder_path=..., tokenizer_path=...)")
        return request

    def _check_memory(self, request: RenderRequest) -> None:
        """Refuse, with the figures, a render the device's free memory cannot hold
        (:mod:`~factorportrait.inference.memory`)."""
        from factorportrait.inference.memory import check_render_memory

        vae_config = getattr(self.vae, "config", None)
        check_render_memory(request.height, request.width, request.num_frames,
                            getattr(vae_config, "dim", 96), self.dit.config.dim,
                            str(self.device), self.vae_tile)

    def _default_size(self, inputs: dict[str, Any]) -> dict[str, Any]:
        height, width = inputs.get("height"), inputs.get("width")
        if self.trained_size is None:
            return inputs
        if height is None and width is None:
            return {**inputs, "height": self.trained_size[0], "width": self.trained_size[1]}
        if (height, width) != tuple(self.trained_size):
            LOGGER.warning("rendering at %s x %s (height x width), but the checkpoint was trained "
                           "at %d x %d: expect worse results away from the training size",
                           height if height is not None else "(image)",
                           width if width is not None else "(image)", *self.trained_size)
        return inputs

    # ------------------------------------------------------------------ 2. faces

    def faces(self, request: RenderRequest, progress: bool = False) -> RenderRequest:
        """Step 2 (:func:`~factorportrait.inference.faces.resolve_faces`), once per request:
        the reference's portrait crop, tracked pose and fitted avatar; a driving video's
        tracked head motion (transferred onto the reference) and codes."""
        from factorportrait.inference.faces import resolve_faces

        if request.faces_done:
            return request
        if request.reference_crop == "face" or request.driving_video is not None:
            if self.face_tracker is None:
                from factorportrait.tracking import FaceTracker
                self.face_tracker = FaceTracker()
        return resolve_faces(request, self.face_tracker, self.expression_encoder,
                             self.mesh_source, pose_encoder=self.pose_encoder,
                             progress=progress)

    # ------------------------------------------------------------------ 3. controls

    def plan(self, request: RenderRequest) -> ControlPlan:
        """Step 3: expression codes (the reference's where needed) and the mode's per-frame
        controls (runs step 2 first if it has not run)."""
        self.faces(request)
        reference = request.reference
        if reference.expression_codes is None:
            reference = reference.replace(expression_codes=self._reference_code(request))
        return plan_controls(request.mode, request.num_frames, reference,
                             driving=request.driving, trajectory=request.trajectory,
                             pose_source=request.pose_source,
                             expression_source=request.expression_source,
                             normal_maps=load_normal_maps(request))

    def _reference_code(self, request: RenderRequest) -> Tensor:
        """``(1, 128)``: the encoder's code of the reference image, else zeros ("neutral")."""
        if self.expression_encoder is None:
            return torch.zeros(1, 128)
        image = ((request.reference_image + 1) * 127.5).round().byte().permute(1, 2, 0)[None]
        from factorportrait.tracking.video import needs_landmarks, tracked_codes

        if needs_landmarks(self.expression_encoder):  # its crop comes from the landmarks
            if self.face_tracker is None:
                from factorportrait.tracking import FaceTracker
                self.face_tracker = FaceTracker()
            face = self.face_tracker.track_image(image[0], name="reference_image")
            return pad_codes(tracked_codes(self.expression_encoder, image, face.boxes,
                                           landmarks=face.landmarks), "expression_encoder")
        return pad_codes(encode_expressions(self.expression_encoder, image, self.device),
                         "expression_encoder")

    # ------------------------------------------------------------------ 4-5. conditions

    @torch.no_grad()
    def encode_conditions(self, request: RenderRequest, plan: ControlPlan,
                          prompt: Optional[str] = None) -> PortraitConditions:
        """Steps 4-5: normal maps -> VAE latents; reference image -> latent; rays; context."""
        height, width, tile = request.height, request.width, self.vae_tile
        mesh_source = request.mesh_source if request.mesh_source is not None else \
            self.mesh_source
        with self._timed("conditions"):
            normals = render_plan_normals(plan, mesh_source, height, width,
                                          self.normal_supersample)  # (F, 3, H, W) in [0, 1]
        if normals is None:
            LOGGER.warning("no mesh source or pose parameters for the pose condition: it is "
                           "dropped (zero normal latents)")
        vae_device = next(self.vae.parameters()).device
        with self._timed("vae"):
            normal_latents = None if normals is None else self.vae.encode(
                (normals * 2 - 1).permute(1, 0, 2, 3)[None].to(vae_device), tile)
            reference_latent = self.vae.encode_image(
                request.reference_image[None].to(vae_device))  # (1, 16, 1, h, w)
        with self._timed("conditions"):
            context = None if prompt is None else self.text_encoder(prompt)
            if context is not None and context.shape[-1] != self.dit.config.text_dim:
                raise ValueError(f"text encoder gives {context.shape[-1]}-d context; the DiT "
                                 f"takes {self.dit.config.text_dim}")
            landmarks = None
            if self.dit.config.expression_condition == "landmarks" and plan.landmarks is None:
                landmarks = mesh_landmarks(plan, mesh_source)
            conditions = assemble_conditions(plan, reference_latent.float(), normal_latents,
                                             height, width, context, landmarks)
            check_required(conditions, self.dit.config, "the render")
        return conditions.to(self.device)

    # ------------------------------------------------------------------ 6. denoise

    def denoise(self, conditions: PortraitConditions, *, num_steps: int = DEFAULT_STEPS,
                guidance: Guidance | str | None = DEFAULT_GUIDANCE, seed: int = 0,
                shift: float = DEFAULT_SHIFT, batch_cfg: bool = True,
                progress: bool = True) -> Tensor:
        """Step 6: ``(1, 16, F_lat, h, w)`` float32 latents from seeded noise; sliding
        windows of ``window_frames`` when the video is longer."""
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"seed (--seed) must be an integer in [0, 2^63), got {seed!r}")
        windows = plan_windows(conditions.latent_frames, latent_frames(self.window_frames),
                               self.window_overlap // 4)
        generator = torch.Generator().manual_seed(seed)
        return sample_windows(self.dit, conditions, windows, generator=generator,
                              num_steps=num_steps, shift=shift, guidance=guidance,
                              batch_cfg=batch_cfg, progress=progress)

    # ------------------------------------------------------------------ 7. decode

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Step 7: ``(1, 16, F_lat, h, w)`` -> ``uint8 (F, H, W, 3)`` on the CPU."""
        vae_device = next(self.vae.parameters()).device
        tile = None if self.vae_tile is None else self.vae_tile // 8
        video = self.vae.decode(latents.to(vae_device), tile)[0]  # (3, F, H, W) in [-1, 1]
        if not bool(torch.isfinite(video).all()):
            raise ValueError("the VAE decoded non-finite pixels (NaN/Inf) from finite "
                             "latents: check the VAE's weights and dtype")
        return ((video.float() + 1) * 127.5).round().clamp(0, 255).byte().permute(
            1, 2, 3, 0).cpu().contiguous()

    def paste_back(self, request: RenderRequest, frames: Tensor) -> Tensor:
        """Step 7 (optional): ``uint8 (F, H, W, 3)`` generated frames pasted into the full
        reference photo where the reference crop was cut (feathered, colour-matched on the
        border: :func:`~factorportrait.tracking.crop.paste_back`) -> ``uint8 (F, H0, W0, 3)``,
        cut to even sides for H.264."""
        from factorportrait.tracking.crop import paste_back

        self.faces(request)
        count = frames.shape[0]
        crops = frames.permute(0, 3, 1, 2).float()
        photo = request.photo.permute(2, 0, 1)[None].float()
        box = request.crop_box[torch.zeros(count, dtype=torch.long)]
        pasted = paste_back(crops, photo, box).round().clamp(0, 255).byte()
        height, width = pasted.shape[-2:]
        return pasted[..., :height - height % 2, :width - width % 2].permute(0, 2, 3, 1) \
            .contiguous()

    @contextlib.contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        """Accumulate wall time per stage in ``self.timings`` (faces / conditions / vae /
        dit)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

