"""Low-memory rendering: keep ``resident`` DiT blocks on the compute device and stream the
others in from host memory for their turn (FantasyPortrait / DiffSynth's
``num_persistent_param_in_dit``, by whole blocks).

Everything but the non-resident blocks lives on ``device``; a streamed block is copied in
just before it runs and back just after, so the device holds the resident blocks plus one
(the copies are synchronous: no prefetch yet). Weights are the same tensors, so
outputs equal the fully resident model's exactly. Through the DiT's ``block_offload`` hook.
"""

from __future__ import annotations

import torch
from torch import nn


class BlockOffload:
    """Install with :func:`enable_block_offload`; counts ``loads`` (blocks streamed in)."""

    def __init__(self, model: nn.Module, resident: int, device: torch.device,
                 storage: torch.device) -> None:
        blocks = list(model.blocks)
        if not 0 <= resident <= len(blocks):
            raise ValueError(f"resident blocks must be in 0..{len(blocks)}, got {resident}")
        self.device, self.storage = torch.device(device), torch.device(storage)
        self.streamed = {id(block) for block in blocks[resident:]}
        self.loads = 0
        model.to(self.device)
        for block in blocks[resident:]:
            block.to(self.storage)

    def load(self, block: nn.Module) -> None:
        if id(block) in self.streamed:
            block.to(self.device)
            self.loads += 1

    def release(self, block: nn.Module) -> None:
        if id(block) in self.streamed:
            block.to(self.storage)


def enable_block_offload(model: nn.Module, resident: int, device: torch.device | str,
                         storage: torch.device | str = "cpu") -> BlockOffload:
    """Keep the first ``resident`` blocks of ``model`` on ``device``, stream the rest from
    ``storage`` (module docstring)."""
    offload = BlockOffload(model, resident, torch.device(device), torch.device(storage))
    model.block_offload = offload
    return offload


def disable_block_offload(model: nn.Module, device: torch.device | str) -> None:
    model.block_offload = None
    model.to(device)
