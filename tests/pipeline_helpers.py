"""Builders shared by the pipeline tests: a tiny random-weight pipeline, an avatar reference
image and driving tracks, all generated here (no downloaded weights)."""

from __future__ import annotations

import functools

import torch

from factorportrait import DiTConfig, FactorPortraitDiT
from factorportrait.inference import AvatarMeshSource, ControlTrack
from factorportrait.models.vae import VAEConfig, WanVAE

SIZE = 32  # pixels; decord reads 32-px-wide videos (not 16/24/48)
FRAMES = 5


@functools.cache
def tiny_dit() -> FactorPortraitDiT:
    """The tiny DiT with its zero-initialised condition paths made live, so every condition
    changes the output."""
    torch.manual_seed(0)
    model = FactorPortraitDiT(DiTConfig.tiny()).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        extra = model.patch_embedding.weight[:, model.config.latent_channels:]
        extra.copy_(torch.randn(extra.shape, generator=g) * 0.05)
        for param in model.expression_controller.output.parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.05)
    return model


@functools.cache
def tiny_vae() -> WanVAE:
    torch.manual_seed(1)
    return WanVAE(VAEConfig.small(dim=8))


@functools.cache
def avatar():
    from factorportrait.body import AvatarIdentity, HeadAvatar
    return HeadAvatar(AvatarIdentity.sample(seed=3))


def mesh_source() -> AvatarMeshSource:
    return AvatarMeshSource(avatar())


@functools.cache
def reference_image(size: int = SIZE) -> torch.Tensor:
    """``uint8 (size, size, 3)``: the avatar's neutral face from the default frontal camera."""
    from factorportrait.inference import default_reference_camera
    from factorportrait.render import Meshes, render

    face = avatar()
    rgb = render(Meshes(face.neutral_vertices, face.faces, face.vertex_colors),
                 default_reference_camera(size, size), size, size, outputs=("rgb",))["rgb"][0]
    return (rgb * 255).round().byte().permute(1, 2, 0).contiguous()


def driving_track(frames: int = FRAMES, seed: int = 0, cameras=None) -> ControlTrack:
    """Random codes, avatar expression weights and a small head motion."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, frames)[:, None]
    return ControlTrack(
        fps=25.0, expression_codes=torch.randn(frames, 128, generator=g),
        expression=torch.rand(frames, 8, generator=g) * 0.5,
        head_rotation=t * torch.tensor([0.0, 0.3, 0.1]),
        head_translation=t * torch.tensor([0.01, 0.0, 0.0]), cameras=cameras,
        source=f"test seed {seed}")


def tiny_pipeline(**options):
    from factorportrait.pipeline import FactorPortraitPipeline
    return FactorPortraitPipeline(tiny_dit(), tiny_vae(), mesh_source=mesh_source(), **options)


class MeanColourEncoder(torch.nn.Module):
    """A stand-in expression encoder: codes from the mean colour of each frame ``(N, 128)``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 128)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(5))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(frames.shape))
        return self.proj(frames.mean(dim=(2, 3)))
