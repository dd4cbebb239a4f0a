"""How much memory a render needs, estimated before anything is allocated, so that an
impossible size is refused with the figure instead of failing in the allocator.

The estimate is the sum of the largest stages' working sets, from measurements on this
project's CPU pipeline (tiny DiT, VAE widths 8–32, 128²–384², 9–17 frames) scaled by the VAE
width and the DiT's width and token count:

    per pixel        4 KB + 200 B × VAE width      (VAE encode/decode working set, full res)
    per frame-pixel  200 B                         (rasterised normal maps, video buffers)
    DiT              tokens × width × 4 B × 30 × guidance branches   (activations)

It errs on the generous side: it is a guard against sizes that cannot fit, not a planner.
"""

from __future__ import annotations

import os

BYTES_PER_PIXEL = 4096
BYTES_PER_PIXEL_PER_VAE_CHANNEL = 200
BYTES_PER_FRAME_PIXEL = 200
DIT_ACTIVATION_FACTOR = 30  # activations per token and channel in a block, float32 words
GUIDANCE_BRANCHES = 3  # the most branches a guided step runs at once


def estimate_render_bytes(height: int, width: int, frames: int, vae_dim: int = 96,
                          dit_dim: int = 1536, vae_tile: int | None = None) -> int:
    """Estimated peak bytes of a render of ``frames`` frames at ``height × width`` (module
    docstring); ``vae_tile`` (pixels) bounds the VAE's working set to one tile."""
    pixels = height * width
    vae_pixels = pixels if vae_tile is None else min(pixels, vae_tile * vae_tile)
    vae = vae_pixels * (BYTES_PER_PIXEL + BYTES_PER_PIXEL_PER_VAE_CHANNEL * vae_dim)
    buffers = frames * pixels * BYTES_PER_FRAME_PIXEL
    tokens = ((frames - 1) // 4 + 2) * (height // 16) * (width // 16)
    dit = tokens * dit_dim * 4 * DIT_ACTIVATION_FACTOR * GUIDANCE_BRANCHES
    return int(vae + buffers + dit)


def available_bytes(device: str = "cpu") -> int | None:
    """Free memory of ``device`` now: CUDA's free memory, else the host's ``MemAvailable``
    (None where it cannot be read)."""
    if str(device).startswith("cuda"):
        import torch
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} PiB"


def check_render_memory(height: int, width: int, frames: int, vae_dim: int, dit_dim: int,
                        device: str = "cpu", vae_tile: int | None = None) -> None:
    """``ValueError`` with the figures when the estimate exceeds the free memory."""
    need = estimate_render_bytes(height, width, frames, vae_dim, dit_dim, vae_tile)
    free = available_bytes(device)
    if free is not None and need > free:
        raise ValueError(f"a {height} x {width} render of {frames} frames needs about "
                         f"{human_bytes(need)} (estimated; VAE and normal maps at full "
                         f"resolution, DiT activations), and {device} has {human_bytes(free)} "
                         "free: lower height/width (--height/--width) or the frame count, or "
                         "tile the VAE (vae_tile, --vae-tile)")
