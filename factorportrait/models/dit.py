"""FactorPortraitDiT: Wan 2.1 T2V DiT + condition fusion + per-frame AdaLN expression control.

Data flow of :meth:`FactorPortraitDiT.forward` (FactorPortrait §4.2, Fig. 3):

    z_t (B,16,F,h,w) + conditions ─ ConditionFusion ─ tokens (B, (1+F)·h'·w', dim)
    timestep (B,) ─ sinusoid ─ time_embedding ─ t (B, dim)
    expression (B,T,128) ─ ExpressionController ─ e (B,F,dim); t_i = t + [0, e]  (B,1+F,dim)
    t_i ─ time_projection ─ per-frame shift/scale/gate (B,1+F,6,dim)
    Wan blocks (modulation broadcast over each frame's tokens) ─ head (per-frame) ─ drop frame 0
    ─ velocity (B,16,F,h,w)

DeX-Portrait variants (``DiTConfig`` fields, :mod:`factorportrait.models.dex`): head-pose ray
maps as 24 more fused channels; the reference frame's tokens warped by ``P_d P_s⁻¹`` and added
before chosen blocks; expression (codes or landmarks) through per-frame cross attention after
each block's text cross attention. All start at zero.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from factorportrait.config import DiTConfig
from factorportrait.models import backbone
from factorportrait.models.conditions import PortraitConditions
from factorportrait.models.dex import (ExpressionTokens, FrameCrossAttention, LandmarkEncoder,
                                       ReferenceWarp)
from factorportrait.models.expression import ExpressionController
from factorportrait.models.fusion import ConditionFusion


NEW_MODULES = ("expression_controller", "expression_tokens", "landmark_encoder",
               "expression_attention", "reference_warp")  # absent from Wan checkpoints


def modulate_frames(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN, Eq. 1: ``x·(1 + scale_i) + shift_i`` per frame i, broadcast over its tokens.

    Args:
        x: ``(B, F, S, D)`` tokens grouped by frame.
        shift, scale: ``(B, F, 1, D)``. No per-token tensor is ever built.
    """
    return x * (1 + scale) + shift


def block_forward(block: nn.Module, x: torch.Tensor, context: torch.Tensor,
                  frame_modulation: torch.Tensor, freqs: torch.Tensor,
                  expression_attention: nn.Module | None = None,
                  expression_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """One diffsynth Wan ``DiTBlock`` with per-frame modulation.

    Args:
        block: a diffsynth ``DiTBlock`` (its attention modules, norms, FFN and ``modulation``).
        x: ``(B, F, S, D)`` tokens, S = tokens per latent frame.
        context: ``(B, L, D)`` embedded text context.
        frame_modulation: ``(B, F, 6, D)`` = time_projection(t_i) per frame.
        freqs: ``(F·S, 1, head_dim/2)`` RoPE.
        expression_attention: this block's :class:`~factorportrait.models.dex.FrameCrossAttention`
            (DeX expression injection), applied after the text cross attention to frames 1…;
            with ``expression_tokens (B, F-1, K, D)``. ``None``: Wan's block unchanged.
    Returns:
        ``(B, F, S, D)``.
    """
    batch, frames, tokens, dim = x.shape
    modulation = block.modulation.to(frame_modulation.dtype).unsqueeze(0) + frame_modulation
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        modulation.unsqueeze(2).unbind(dim=3))  # each (B, F, 1, D)

    def per_token(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(batch, frames * tokens, dim)

    def per_frame(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(batch, frames, tokens, dim)

    attn_in = modulate_frames(block.norm1(x), shift_msa, scale_msa)
    x = x + gate_msa * per_frame(block.self_attn(per_token(attn_in), freqs))
    x = x + per_frame(block.cross_attn(block.norm3(per_token(x)), context))
    if expression_attention is not None and expression_tokens is not None:
        update = expression_attention(x[:, 1:], expression_tokens)
        x = torch.cat([x[:, :1], x[:, 1:] + update], dim=1)
    ffn_in = modulate_frames(block.norm2(x), shift_mlp, scale_mlp)
    return x + gate_mlp * block.ffn(ffn_in)


class FactorPortraitDiT(nn.Module):
    """The FactorPortrait video DiT. Submodule names follow the official Wan 2.1 checkpoint
    (``patch_embedding``, ``text_embedding``, ``time_embedding``, ``time_projection``,
    ``blocks.N.*``, ``head.*``); new modules are ``expression_controller`` (AdaLN expression),
    ``expression_tokens`` / ``landmark_encoder`` + ``expression_attention.N`` (cross-attention
    expression), ``reference_warp`` and the ``null_context`` buffer."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = ConditionFusion(config)
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim),
                                            nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(),
                                            nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = backbone.wan_blocks(config)
        self.head = backbone.wan_head(config)
        if config.uses_adaln_expression:
            self.expression_controller = ExpressionController(config)
        if config.uses_expression_attention:
            if config.expression_condition == "landmarks":
                self.landmark_encoder = LandmarkEncoder(config)
            else:
                self.expression_tokens = ExpressionTokens(config)
            self.expression_attention = nn.ModuleList([
                FrameCrossAttention(dim, config.num_heads, config.eps)
                for _ in range(config.num_layers)])
        if config.reference_warp_blocks:
            self.reference_warp = ReferenceWarp(config)
        self.register_buffer("null_context",
                             torch.zeros(1, config.context_length, config.text_dim))
        self.gradient_checkpointing = False
        # Sequence parallelism, installed from outside (training/sequence_parallel.py): an
        # object whose split() takes this rank's share of every frame's tokens (and their
        # RoPE) and whose gather() puts the outputs back together. None: one device.
        self.sequence_parallel = None
        # Low-memory rendering, installed from outside (inference/offload.py): an object whose
        # load(block) / release(block) bring a block's weights in and out. None: all resident.
        self.block_offload = None

    # ------------------------------------------------------------------ forward

    def frame_embeddings(self, timestep: torch.Tensor, expression: torch.Tensor | None,
                         frames: int) -> torch.Tensor:
        """Frame-specific timestep embeddings ``t_i = t + e_i`` -> ``(B, 1+F_lat, dim)``.

        The reference frame (index 0) gets ``e = 0``; so do all frames when ``expression``
        is ``None``.
        """
        dtype = self.time_embedding[0].weight.dtype
        t = self.time_embedding(
            backbone.timestep_embedding(self.config.freq_dim, timestep).to(dtype))  # (B, dim)
        t = t[:, None].expand(-1, 1 + frames, -1)
        if expression is None or not self.config.uses_adaln_expression:
            return t
        offsets = self.expression_controller(expression.to(dtype))  # (B, F_lat, dim)
        return t + torch.cat([torch.zeros_like(offsets[:, :1]), offsets], dim=1)

    def embed_context(self, context: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``(B, L, text_dim)`` or the stored null context -> ``(B, L, dim)``."""
        if context is None:
            context = self.null_context.expand(batch, -1, -1)
        return self.text_embedding(context.to(self.null_context.dtype))

    def forward(self, noisy_latents: torch.Tensor, timestep: torch.Tensor,
                conditions: PortraitConditions) -> torch.Tensor:
        """Predict the flow-matching velocity of the generated frames.

        Args:
            noisy_latents: ``(B, 16, F_lat, h, w)`` z_t.
            timestep: ``(B,)`` in [0, 1000].
            conditions: see :class:`PortraitConditions`.
        Returns:
            ``(B, 16, F_lat, h, w)`` velocity for frames 1…F_lat (the reference is dropped).
        """
        config = self.config
        conditions.validate(noisy_latents, latent_channels=config.latent_channels,
                            ray_channels=config.ray_channels,
                            expression_dim=config.expression_dim, text_dim=config.text_dim,
                            check_finite=False, landmark_points=(
                                config.landmark_points
                                if config.expression_condition == "landmarks" else None))
        batch, _, frames, height, width = noisy_latents.shape
        if height % config.patch_size[1] or width % config.patch_size[2]:
            raise ValueError(f"noisy_latents spatial size {height}x{width} must be divisible "
                             f"by the patch size {config.patch_size[1:]}")
        if timestep.shape != (batch,):
            raise ValueError(f"timestep must have shape (B,) = ({batch},), got "
                             f"{tuple(timestep.shape)}")
        dtype = self.time_embedding[0].weight.dtype
        tokens = self.patch_embedding(noisy_latents.to(dtype), conditions)  # (B,D,1+F,h',w')
        grid = tokens.shape[2:]
        x = rearrange(tokens, "b d f h w -> b f (h w) d").contiguous()  # (B, 1+F, S, D)
        t_frames = self.frame_embeddings(timestep, conditions.expression, frames)
        frame_modulation = self.time_projection(t_frames).unflatten(2, (6, self.config.dim))
        context = self.embed_context(conditions.context, batch)
        freqs = backbone.rope_frequencies(self.config.head_dim, *grid, device=x.device)
        parallel = self.sequence_parallel
        if parallel is not None:  # this rank's tokens of every frame: (B, 1+F, S/P, D)
            x, freqs = parallel.split(x, freqs)
        tokens = self.expression_condition_tokens(conditions)
        warp = getattr(self, "reference_warp", None)
        transforms = None
        if warp is not None and conditions.head_pose is not None:
            transforms = warp.frame_transforms(conditions.head_pose)  # (B, F, 3, 4)
        offload = self.block_offload
        for index, block in enumerate(self.blocks):
            if transforms is not None and index in warp:
                x = self.add_warped_reference(x, index, grid[1:], transforms)
            attention = self.expression_attention[index] if tokens is not None else None
            if offload is not None:
                offload.load(block)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block_forward, block, x, context, frame_modulation, freqs,
                               attention, tokens, use_reentrant=False)
            else:
                x = block_forward(block, x, context, frame_modulation, freqs, attention, tokens)
            if offload is not None:
                offload.release(block)
        x = self.head_forward(x[:, 1:], t_frames[:, 1:])  # generated frames only
        if parallel is not None:
            x = parallel.gather(x)  # (B, F, S, patch)
        patch_t, patch_h, patch_w = self.config.patch_size
        return rearrange(x, "b f (h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)",
                         h=grid[1], w=grid[2], pt=patch_t, ph=patch_h, pw=patch_w)

    def expression_condition_tokens(self, conditions: PortraitConditions
                                    ) -> torch.Tensor | None:
        """Keys of the per-frame expression cross attention ``(B, F_lat, K, dim)``, or ``None``
        when the model has none or the condition is absent."""
        dtype = self.time_embedding[0].weight.dtype
        if not self.config.uses_expression_attention:
            return None
        if self.config.expression_condition == "landmarks":
            if conditions.landmarks is None:
                return None
            return self.landmark_encoder(conditions.landmarks.to(dtype))
        if conditions.expression is None:
            return None
        return self.expression_tokens(conditions.expression.to(dtype))

    def add_warped_reference(self, x: torch.Tensor, block: int, grid: tuple[int, int],
                             transforms: torch.Tensor) -> torch.Tensor:
        """Reference warping before ``block`` (DeX §3.3): frame 0's tokens warped to every
        generated frame, projected (zero-initialised) and added. ``x (B, 1+F, S, D)`` (this
        rank's ``S/P`` tokens under sequence parallelism; the reference is gathered first)."""
        parallel = self.sequence_parallel
        reference = x[:, :1] if parallel is None else parallel.gather(x[:, :1])
        warped = self.reference_warp.warp(reference[:, 0], grid, transforms)  # (B, F, S, D)
        if parallel is not None:
            warped = parallel.local(warped)
        update = self.reference_warp.project(block, warped.to(x.dtype))
        return torch.cat([x[:, :1], x[:, 1:] + update], dim=1)

    def head_forward(self, x: torch.Tensor, t_frames: torch.Tensor) -> torch.Tensor:
        """Wan's head with per-frame shift/scale: ``(B,F,S,D)``, ``(B,F,D)`` -> patches."""
        head = self.head
        shift, scale = (head.modulation.to(t_frames.dtype).unsqueeze(0)
                        + t_frames.unsqueeze(2)).unsqueeze(2).unbind(dim=3)  # (B,F,1,D) each
        return head.head(modulate_frames(head.norm(x), shift, scale))

    # ------------------------------------------------------------------ parameters

    def enable_gradient_checkpointing(self, enabled: bool = True) -> "FactorPortraitDiT":
        self.gradient_checkpointing = enabled
        return self

    def condition_parameters(self) -> list[nn.Parameter]:
        """Parameters of the condition paths (the widened patch embedding, the expression
        controller and every DeX path), for training only the new modules."""
        new = [module for name in NEW_MODULES if (module := getattr(self, name, None))]
        return [self.patch_embedding.weight, self.patch_embedding.bias,
                *(parameter for module in new for parameter in module.parameters())]

    # ------------------------------------------------------------------ weights

    @classmethod
    def from_wan(cls, path, config: DiTConfig) -> "FactorPortraitDiT":
        """Build from official Wan 2.1 T2V DiT weights (:mod:`factorportrait.models.weights`)."""
        from factorportrait.models.weights import load_wan_weights
        model = cls(config)
        load_wan_weights(model, path)
        return model

    def save_pretrained(self, directory, trained: dict | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` atomically to ``directory``;
        ``trained`` (``{"height", "width", "frames"}``) records the training size, which the
        pipeline renders at by default."""
        from factorportrait.models.weights import save_pretrained
        save_pretrained(self, directory, trained)

    @classmethod
    def from_pretrained(cls, directory, map_location: str | torch.device = "cpu"
                        ) -> "FactorPortraitDiT":
        """Load a directory written by :meth:`save_pretrained`. Nothing is unpickled."""
        from factorportrait.models.weights import load_pretrained
        return load_pretrained(cls, directory, map_location)
