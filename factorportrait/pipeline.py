"""FactorPortraitPipeline: one portrait image + controls -> a video (FactorPortrait §4, Fig. 2).

Numbered steps of :meth:`FactorPortraitPipeline.__call__` (docs/pipeline.md):

    1. check inputs          everything cheap, before any heavy work (inference/inputs.py)
    2. per-frame controls    codes, cameras and mesh pose of the mode (inference/controls.py)
    3. pose condition        normal maps rendered from the meshes, VAE-encoded
    4. conditions            reference latent, Plücker rays, text context -> PortraitConditions
    5. denoise               Euler flow sampling; guidance branches batched in one forward;
                             sliding windows for long videos (inference/long_video.py)
    6. decode                VAE (optionally tiled) -> uint8 frames; optional atomic mp4
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

from factorportrait.diffusion.flow_matching import DEFAULT_SHIFT
from factorportrait.diffusion.guidance import Guidance
from factorportrait.inference.control_track import ControlTrack
from factorportrait.inference.controls import (MODE_FACTORS, ControlPlan, assemble_conditions,
                                               pad_codes, plan_controls, render_plan_normals)
from factorportrait.inference.encoders import ExpressionEncoder, encode_expressions
from factorportrait.inference.inputs import RenderRequest, check_render_inputs, load_normal_maps
from factorportrait.inference.long_video import latent_frames, plan_windows, sample_windows
from factorportrait.inference.mesh_sources import MeshSource
from factorportrait.io.video import read_video, write_video
from factorportrait.models.conditions import PortraitConditions

LOGGER = logging.getLogger(__name__)
DEFAULT_GUIDANCE = Guidance("progressive_hybrid", 2.5)  # DeX-Portrait Eq. 5, ω = 2.5
DEFAULT_STEPS = 35  # DeX-Portrait's step count; its 5/5/25 split scales to any count
WINDOW_FRAMES = 81  # the longest training clips (curriculum stage 4)
WINDOW_OVERLAP = 16  # video frames shared by consecutive windows (4 latent frames)


class FactorPortraitPipeline:
    """Animate a portrait from expression, pose and camera controls.

    Components:
        dit: a :class:`~factorportrait.models.dit.FactorPortraitDiT`.
        vae: a :class:`~factorportrait.models.vae.WanVAE`.
        mesh_source: renders the pose condition (``AvatarMeshSource``, ``SMPLXMeshSource``);
            without one the pose condition is dropped (zero normal latents) unless
            ``normal_maps`` are given.
        expression_encoder: frames ``(N,3,H,W)`` in [-1,1] -> codes ``(N,D)``; needed for a
            driving video without codes (:mod:`factorportrait.inference.encoders`).
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
                 normal_supersample: int = 1) -> None:
        if window_frames < 5 or latent_frames(window_frames) <= window_overlap // 4 \
                or window_overlap % 4 or window_overlap < 0:
            raise ValueError(f"window_frames must be 4k + 1 >= 5 and window_overlap a multiple "
                             f"of 4 below window_frames - 1, got {window_frames}, "
                             f"{window_overlap}")
        if vae_tile is not None and (vae_tile <= 0 or vae_tile % 64):
            raise ValueError(f"vae_tile must be a positive multiple of 64 pixels, got {vae_tile}")
        self.dit, self.vae = dit.eval(), vae.eval()
        self.mesh_source, self.expression_encoder = mesh_source, expression_encoder
        self.text_encoder = text_encoder
        self.window_frames, self.window_overlap = window_frames, window_overlap
        self.vae_tile, self.normal_supersample = vae_tile, normal_supersample
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *,
                        vae_path: Optional[str | os.PathLike] = None,
                        preset: Optional[str] = None, device: str | torch.device = "cpu",
                        dtype: Optional[torch.dtype] = None,
                        text_encoder_path: Optional[str | os.PathLike] = None,
                        tokenizer_path: Optional[str | os.PathLike] = None,
                        **components: Any) -> "FactorPortraitPipeline":
        """Load our checkpoint directory (``config.json`` + ``model.safetensors``) and a VAE
        (the directory's ``vae_config.json`` + ``vae.safetensors``, or ``vae_path`` to
        ``Wan2.1_VAE.pth``). Every file is checked before any weights are read; ``preset``
        (``tiny``, ``wan_1_3b``, ``wan_14b``) also checks the architecture."""
        from factorportrait.inference import loading
        from factorportrait.models.dit import FactorPortraitDiT

        loading.check_checkpoint(directory, preset)
        vae_source = loading.resolve_vae_source(directory, vae_path)
        if (text_encoder_path is None) != (tokenizer_path is None):
            raise ValueError("text_encoder_path and tokenizer_path go together")
        text_encoder = None
        if text_encoder_path is not None:
            text_encoder = loading.load_text_encoder(text_encoder_path, tokenizer_path, device)
        dit = FactorPortraitDiT.from_pretrained(directory, map_location=device)
        vae = loading.load_vae(vae_source).to(device)
        return cls(dit.to(dtype=dtype) if dtype else dit, vae, text_encoder=text_encoder,
                   **components)

    def to(self, device: str | torch.device | None = None,
           dtype: Optional[torch.dtype] = None) -> "FactorPortraitPipeline":
        """Move the DiT (and cast it to ``dtype``) and the VAE (kept float32) to ``device``."""
        self.dit.to(device=device, dtype=dtype)
        self.vae.to(device=device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    # ------------------------------------------------------------------ call

    def __call__(self, reference_image: Any, *, mode: str = "driving",
                 camera_trajectory: Any = None, driving_video: Any = None,
                 control_track: Any = None, expression_codes: Optional[Tensor] = None,
                 pose_source: Any = None, expression_source: Any = None,
                 normal_maps: Any = None, reference: Optional[ControlTrack] = None,
                 prompt: Optional[str] = None, num_frames: Optional[int] = None,
                 height: Optional[int] = None, width: Optional[int] = None,
                 num_steps: int = DEFAULT_STEPS, guidance: Guidance | str | None = DEFAULT_GUIDANCE,
                 seed: int = 0, shift: float = DEFAULT_SHIFT, batch_cfg: bool = True,
                 output_path: Optional[str | os.PathLike] = None, fps: Optional[float] = None,
                 progress: bool = True) -> Tensor:
        """Render a video; returns ``uint8 (F, H, W, 3)`` frames (and writes ``output_path``).

        Inputs (docs/pipeline.md): ``reference_image`` (path, ``uint8 (H,W,3)`` or float
        ``(3,H,W)`` in [-1,1]); ``mode`` (:data:`~factorportrait.inference.CONTROL_MODES`);
        ``camera_trajectory`` (Cameras, camera file, preset name or ``(name, params)``);
        ``driving_video`` (path or ``uint8 (F,H,W,3)``) and/or ``control_track`` (ControlTrack
        or ``.safetensors``); ``expression_codes (F, D)``; ``pose_source`` /
        ``expression_source`` for ``mixed``; ``normal_maps`` (``(F,3,H,W)`` in [0,1] or a
        video); ``reference`` (1-frame track: reference camera, pose, expression code).
        ``num_frames`` defaults to the sources' length; ``height``/``width`` to the image's.
        """
        self.timings = {}
        # 1. Check inputs (nothing heavy happens before this has passed)
        request = self.check_inputs(
            reference_image, mode=mode, camera_trajectory=camera_trajectory,
            driving_video=driving_video, control_track=control_track,
            expression_codes=expression_codes, pose_source=pose_source,
            expression_source=expression_source, normal_maps=normal_maps, reference=reference,
            prompt=prompt, num_frames=num_frames, height=height, width=width, fps=fps,
            output_path=output_path)
        # 2. Per-frame controls of the mode: codes, cameras, mesh pose
        with self._timed("conditions"):
            plan = self.plan(request)
        # 3-4. Pose condition, reference latent, rays, text -> PortraitConditions
        conditions = self.encode_conditions(request, plan, prompt)
        # 5. Denoise
        with self._timed("dit"):
            latents = self.denoise(conditions, num_steps=num_steps, guidance=guidance,
                                   seed=seed, shift=shift, batch_cfg=batch_cfg,
                                   progress=progress)
        # 6. Decode (and write the mp4 atomically: a failed render leaves no file)
        with self._timed("vae"):
            frames = self.decode(latents)
        if request.output_path is not None:
            write_video(request.output_path, frames, fps=request.fps)
        return frames

    # ------------------------------------------------------------------ 1. check inputs

    def check_inputs(self, reference_image: Any, *, prompt: Optional[str] = None,
                     **inputs: Any) -> RenderRequest:
        """Step 1: validate every input (:func:`~factorportrait.inference.inputs.
        check_render_inputs`) and that the components can serve it."""
        request = check_render_inputs(reference_image, **inputs)
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

    # ------------------------------------------------------------------ 2. controls

    def plan(self, request: RenderRequest) -> ControlPlan:
        """Step 2: expression codes (encoder where needed) and the mode's per-frame controls."""
        driving, reference = request.driving, request.reference
        if request.driving_video is not None:
            frames = _video_frames(request.driving_video, request.num_frames)
            codes = encode_expressions(self.expression_encoder, frames, self.device)
            driving = (ControlTrack(fps=request.fps, expression_codes=codes) if driving is None
                       else driving.replace(expression_codes=codes))
        if reference.expression_codes is None:
            reference = reference.replace(expression_codes=self._reference_code(request))
        return plan_controls(request.mode, request.num_frames, reference, driving=driving,
                             trajectory=request.trajectory, pose_source=request.pose_source,
                             expression_source=request.expression_source,
                             normal_maps=load_normal_maps(request))

    def _reference_code(self, request: RenderRequest) -> Tensor:
        """``(1, 128)``: the encoder's code of the reference image, else zeros ("neutral")."""
        if self.expression_encoder is None:
            return torch.zeros(1, 128)
        image = ((request.reference_image + 1) * 127.5).round().byte().permute(1, 2, 0)[None]
        return pad_codes(encode_expressions(self.expression_encoder, image, self.device),
                         "expression_encoder")

    # ------------------------------------------------------------------ 3-4. conditions

    @torch.no_grad()
    def encode_conditions(self, request: RenderRequest, plan: ControlPlan,
                          prompt: Optional[str] = None) -> PortraitConditions:
        """Steps 3-4: normal maps -> VAE latents; reference image -> latent; rays; context."""
        height, width, tile = request.height, request.width, self.vae_tile
        with self._timed("conditions"):
            normals = render_plan_normals(plan, self.mesh_source, height, width,
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
            conditions = assemble_conditions(plan, reference_latent.float(), normal_latents,
                                             height, width, context)
        return conditions.to(self.device)

    # ------------------------------------------------------------------ 5. denoise

    def denoise(self, conditions: PortraitConditions, *, num_steps: int = DEFAULT_STEPS,
                guidance: Guidance | str | None = DEFAULT_GUIDANCE, seed: int = 0,
                shift: float = DEFAULT_SHIFT, batch_cfg: bool = True,
                progress: bool = True) -> Tensor:
        """Step 5: ``(1, 16, F_lat, h, w)`` float32 latents from seeded noise; sliding
        windows of ``window_frames`` when the video is longer."""
        windows = plan_windows(conditions.latent_frames, latent_frames(self.window_frames),
                               self.window_overlap // 4)
        generator = torch.Generator().manual_seed(seed)
        return sample_windows(self.dit, conditions, windows, generator=generator,
                              num_steps=num_steps, shift=shift, guidance=guidance,
                              batch_cfg=batch_cfg, progress=progress)

    # ------------------------------------------------------------------ 6. decode

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Step 6: ``(1, 16, F_lat, h, w)`` -> ``uint8 (F, H, W, 3)`` on the CPU."""
        vae_device = next(self.vae.parameters()).device
        tile = None if self.vae_tile is None else self.vae_tile // 8
        video = self.vae.decode(latents.to(vae_device), tile)[0]  # (3, F, H, W) in [-1, 1]
        return ((video.float() + 1) * 127.5).round().clamp(0, 255).byte().permute(
            1, 2, 3, 0).cpu().contiguous()

    @contextlib.contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        """Accumulate wall time per stage in ``self.timings`` (conditions / vae / dit)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


def _video_frames(video: Any, count: int) -> Tensor:
    """The first ``count`` frames of a driving video (path or ``uint8 (F,H,W,3)``)."""
    if isinstance(video, (str, os.PathLike)):
        return read_video(video, range(count))
    return torch.as_tensor(video)[:count]
