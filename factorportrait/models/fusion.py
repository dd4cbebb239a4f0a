"""Condition fusion layer (FactorPortrait §4.2, Fig. 3; DESIGN "Condition fusion").

Per latent frame the channels latent | reference | normals | rays are concatenated and patch
embedded by one Conv3d, Wan's ``patch_embedding`` widened from 16 to 72 input channels:

| slot      | ch | frame 0 (reference)            | frames 1.. (generated)        |
|-----------|----|--------------------------------|-------------------------------|
| latent    | 16 | clean reference latent         | noisy latent z_t              |
| reference | 16 | reference latent               | zeros                         |
| normals   | 16 | zeros                          | normal-map video latents      |
| rays      | 24 | identity-camera Plücker rays   | Plücker rays, 4 frames × 6 ch |
| head rays | 24 | source head-pose ray maps      | source + driving ray maps     |

The head-ray slot (DeX-Portrait Eq. 3, :func:`~factorportrait.geometry.head_pose.dit_head_rays`)
exists only with ``DiTConfig.head_pose_rays`` (96 channels); without ``head_pose`` it is zero.
The new input channels start at zero, so at initialisation the layer equals Wan's patch
embedding applied to ``cat([reference_latent, z_t], dim=2)``.
"""

from __future__ import annotations

import torch
from torch import nn

from factorportrait.config import DiTConfig
from factorportrait.geometry.head_pose import dit_head_rays
from factorportrait.geometry.rays import LATENT_STRIDE
from factorportrait.models.conditions import PortraitConditions


class ConditionFusion(nn.Conv3d):
    """Wan's patch embedding over the fused condition channels.

    It *is* the Conv3d (``weight (dim, 72, 1, 2, 2)``), so its parameters keep Wan's official
    names ``patch_embedding.weight`` / ``patch_embedding.bias`` inside the DiT.
    """

    def __init__(self, config: DiTConfig):
        super().__init__(config.in_channels, config.dim, kernel_size=config.patch_size,
                         stride=config.patch_size)
        self.latent_channels = config.latent_channels
        self.head_pose_rays = config.head_pose_rays
        with torch.no_grad():
            self.weight[:, config.latent_channels:].zero_()

    def fuse(self, noisy_latents: torch.Tensor, conditions: PortraitConditions) -> torch.Tensor:
        """Build the fused input.

        Args:
            noisy_latents: ``(B, 16, F_lat, h, w)`` z_t of the generated frames.
            conditions: reference ``(B,16,1,h,w)``, normals ``(B,16,F_lat,h,w)``,
                rays ``(B,24,1+F_lat,h,w)``.
        Returns:
            ``(B, 72, 1+F_lat, h, w)``: latent | reference | normals | rays (| head rays:
            96 channels).
        """
        reference = conditions.reference_latent.to(noisy_latents.dtype)
        generated_zeros = torch.zeros_like(noisy_latents)
        reference_zeros = torch.zeros_like(reference)
        latent = torch.cat([reference, noisy_latents], dim=2)  # (B, 16, 1+F_lat, h, w)
        reference_slot = torch.cat([reference, generated_zeros], dim=2)
        normals = torch.cat([reference_zeros, conditions.normal_latents.to(reference.dtype)],
                            dim=2)
        rays = conditions.rays.to(reference.dtype)
        slots = [latent, reference_slot, normals, rays]
        if self.head_pose_rays:
            if conditions.head_pose is None:
                slots.append(torch.zeros_like(rays))
            else:
                height, width = (LATENT_STRIDE * size for size in reference.shape[-2:])
                with torch.autocast(reference.device.type, enabled=False):
                    head_rays = dit_head_rays(conditions.head_pose.float(), height, width)
                slots.append(head_rays.to(reference.dtype))
        return torch.cat(slots, dim=1)

    def forward(self, noisy_latents: torch.Tensor,  # type: ignore[override]
                conditions: PortraitConditions) -> torch.Tensor:
        """``(B,16,F_lat,h,w)`` + conditions -> patch tokens ``(B, dim, 1+F_lat, h/2, w/2)``."""
        return super().forward(self.fuse(noisy_latents, conditions))

    @torch.no_grad()
    def load_wan_weight(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Copy Wan's 16-channel patch embedding; the new channels stay zero."""
        expected = (self.out_channels, self.latent_channels, *self.kernel_size)
        if tuple(weight.shape) != expected:
            raise ValueError(f"patch_embedding.weight has shape {tuple(weight.shape)}, expected "
                             f"{expected} (a Wan 2.1 T2V patch embedding)")
        self.weight.zero_()
        self.weight[:, : self.latent_channels].copy_(weight)
        self.bias.copy_(bias)
