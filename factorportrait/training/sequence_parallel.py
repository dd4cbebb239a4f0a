"""Sequence parallelism for the DiT, installed around it from outside (the model code is the
same on one device or N).

Split. The DiT's tokens are ``(B, 1+F, S, D)`` — every latent frame (the reference first)
holds ``S`` spatial tokens. Each of the ``P`` ranks of the group keeps ``S/P`` tokens of
*every* frame, so the per-frame AdaLN modulation, the reference frame and the head work on a
shard exactly as on the whole; RoPE is sliced the same way, so every token keeps its global
position. The head's outputs are all-gathered back into ``(B, F, S, ·)`` on every rank.

Attention. Self-attention needs all tokens; two ways around the one attention dispatcher
(``models.backbone.attention``), chosen by :func:`plan_degree`:

- **Ulysses** (DeepSpeed-Ulysses, ``deepspeed.sequence.layer.DistributedAttention``): an
  all-to-all turns sequence shards of all heads into all tokens of ``H/P`` heads, attention
  runs locally, an all-to-all turns it back. Needs ``H % P == 0``.
- **all-gather** (the ``allgather`` context parallelism of torchtitan): each rank keeps its
  queries and all-gathers the keys and values. Exact for any ``P``, at ``O(L)`` key/value
  memory per rank — for head counts ``P`` does not divide (the 1.3B model's 12 heads on 8
  ranks).

Gradients. Every rank computes the same loss from the gathered output; the gather's backward
sums the ranks' gradients for each shard (``torch.distributed.nn``), so a rank's parameter
gradients are ``P`` times its own tokens' share, and averaging them over the group — what a
data-parallel engine does anyway — gives the exact single-process gradient. Ranks of one
group must see the same batch and noise (``data_parallel_rank``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from factorportrait.models import backbone

MODES = ("ulysses", "allgather")


def valid_degrees(num_heads: int, tokens_per_frame: int, mode: str = "auto") -> list[int]:
    """The group sizes that can split ``tokens_per_frame`` tokens (and, for Ulysses, the
    heads) evenly."""
    degrees = [p for p in range(1, tokens_per_frame + 1) if tokens_per_frame % p == 0]
    if mode == "ulysses":
        degrees = [p for p in degrees if num_heads % p == 0]
    return degrees


def plan_degree(degree: int, num_heads: int, tokens_per_frame: int | None = None,
                mode: str = "auto") -> str:
    """The attention mode for ``degree`` ranks (``auto``: Ulysses where the heads divide,
    else all-gather); ``ValueError`` listing the valid degrees when none works."""
    if mode not in (*MODES, "auto"):
        raise ValueError(f"sequence parallel mode must be auto, ulysses or allgather, got "
                         f"{mode!r}")
    if degree < 1:
        raise ValueError(f"sequence parallel degree must be >= 1, got {degree}")
    if mode == "ulysses" and num_heads % degree:
        raise ValueError(f"Ulysses over {degree} ranks needs the head count ({num_heads}) "
                         f"divisible by it; valid degrees: "
                         f"{[p for p in range(1, num_heads + 1) if num_heads % p == 0]} "
                         "(or mode allgather)")
    if tokens_per_frame is not None and tokens_per_frame % degree:
        raise ValueError(f"sequence parallelism over {degree} ranks needs the tokens per "
                         f"latent frame ({tokens_per_frame}) divisible by it; valid degrees "
                         f"for this size: {valid_degrees(num_heads, tokens_per_frame, mode)}")
    if mode == "auto":
        return "ulysses" if num_heads % degree == 0 else "allgather"
    return mode


class _Gather(torch.autograd.Function):
    """All-gather along ``dim`` (2: the DiT's token axis; 1: the sequence axis of keys and
    values); backward: the sum of the ranks' gradients for this rank's shard (as
    ``torch.distributed.nn.functional.all_gather``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, dim: int) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size(group))]
        torch.distributed.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad, group=ctx.group)
        size = torch.distributed.get_world_size(ctx.group)
        rank = torch.distributed.get_rank(ctx.group)
        return grad.chunk(size, dim=ctx.dim)[rank].contiguous(), None, None


class UlyssesAttention(nn.Module):
    """Replaces a diffsynth ``SelfAttention.attn``: ``q, k, v (B, L/P, H·D)`` -> all-to-all ->
    the dispatcher on ``(B, L, H/P·D)`` -> all-to-all -> ``(B, L/P, H·D)``."""

    def __init__(self, num_heads: int, group) -> None:
        super().__init__()
        from deepspeed.sequence.layer import DistributedAttention

        self.num_heads, self.group = num_heads, group
        local_heads = num_heads // torch.distributed.get_world_size(group)
        self.local_heads = local_heads

        def local(q, k, v, *args, **kwargs):  # (B, L, H/P, D) each
            out = backbone.attention(q.flatten(2), k.flatten(2), v.flatten(2), local_heads)
            return out.unflatten(2, (local_heads, q.shape[-1]))

        self.distributed = DistributedAttention(local, group, scatter_idx=2, gather_idx=1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        heads = (self.num_heads, q.shape[-1] // self.num_heads)
        out = self.distributed(q.unflatten(2, heads), k.unflatten(2, heads),
                               v.unflatten(2, heads), 0)
        return out.flatten(2)


class AllGatherAttention(nn.Module):
    """Replaces a diffsynth ``SelfAttention.attn``: local queries against all-gathered keys
    and values: ``q, k, v (B, L/P, H·D)`` -> ``(B, L/P, H·D)``."""

    def __init__(self, num_heads: int, group) -> None:
        super().__init__()
        self.num_heads, self.group = num_heads, group

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k = _Gather.apply(k, self.group, 1)
        v = _Gather.apply(v, self.group, 1)
        return backbone.attention(q, k, v, self.num_heads)


@dataclass
class SequenceParallel:
    """The split and gather of one group (``group=None``: the whole world)."""

    group: Optional[object]
    degree: int
    rank: int
    mode: str
    num_heads: int

    def split(self, x: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, F, S, D)``, ``freqs (F·S, 1, d)`` -> this rank's ``(B, F, S/P, D)`` and
        their RoPE ``(F·S/P, 1, d)``."""
        batch, frames, tokens, dim = x.shape
        plan_degree(self.degree, self.num_heads, tokens, self.mode)
        share = tokens // self.degree
        part = slice(self.rank * share, (self.rank + 1) * share)
        local = x[:, :, part].contiguous()
        freqs = freqs.view(frames, tokens, *freqs.shape[1:])[:, part]
        return local, freqs.reshape(frames * share, *freqs.shape[2:])

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F, S, C)`` (the same on every rank) -> this rank's ``(B, F, S/P, C)``."""
        share = x.shape[2] // self.degree
        return x[:, :, self.rank * share:(self.rank + 1) * share]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F, S/P, C)`` on every rank -> ``(B, F, S, C)`` on every rank."""
        return _Gather.apply(x, self.group, 2)


def install(model: nn.Module, group=None, mode: str = "auto") -> SequenceParallel:
    """Make ``model`` (a :class:`~factorportrait.models.dit.FactorPortraitDiT`) sequence
    parallel over ``group`` (default: every rank): its self-attention modules are wrapped
    and its ``sequence_parallel`` hook set. Collective setup; ``ValueError`` listing the
    valid degrees for an impossible one."""
    degree = torch.distributed.get_world_size(group)
    rank = torch.distributed.get_rank(group)
    config = model.config
    mode = plan_degree(degree, config.num_heads, mode=mode)
    for block in model.blocks:
        attention = block.self_attn
        if isinstance(attention.attn, (UlyssesAttention, AllGatherAttention)):
            continue
        attention.local_attn = attention.attn  # kept for uninstall
        wrapper = UlyssesAttention if mode == "ulysses" else AllGatherAttention
        attention.attn = wrapper(config.num_heads, group)
    parallel = SequenceParallel(group, degree, rank, mode, config.num_heads)
    model.sequence_parallel = parallel
    return parallel


def uninstall(model: nn.Module) -> None:
    """Back to one device."""
    for block in model.blocks:
        attention = block.self_attn
        if hasattr(attention, "local_attn"):
            attention.attn = attention.local_attn
            del attention.local_attn
    model.sequence_parallel = None


def data_parallel_rank(rank: int, world_size: int, degree: int) -> tuple[int, int]:
    """``(data-parallel rank, data-parallel size)`` when groups of ``degree`` consecutive
    ranks split each sample's sequence: the ranks of a group share a batch and its noise."""
    if world_size % degree:
        raise ValueError(f"sequence parallel degree {degree} must divide the {world_size} "
                         "processes")
    return rank // degree, world_size // degree
