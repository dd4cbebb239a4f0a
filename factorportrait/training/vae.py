"""Training a reduced-width Wan VAE on a FactorPortrait dataset (RGB and normal-map videos).

The official Wan 2.1 VAE cannot be downloaded here, so CPU demos use the real Wan VAE code at
a smaller width, trained by this loop: posterior sample → decode → L1 reconstruction + a small
KL term, alternating RGB and normal-map windows. After training, the per-channel latent mean
and std over the training clips are measured and stored in the VAE's config, so its
normalised latents have zero mean and unit variance like Wan's.

``log_var_init`` starts the posterior's log-variance bias at -8: from the default 0 the decoder
first sees latents drowned in unit-variance noise and spends its first steps learning to switch
that noise off (60 steps at width 8: L1 0.223 with -8 against 0.268 without).

``init_from`` continues from a saved VAE: the demo trains on 9-frame windows first, then on
17-frame ones. Each 4-frame causal chunk reads the feature cache its predecessor leaves, and a
VAE never trained past its second or third chunk decodes later ones badly (demo: frames 9-16
of a 9-frame-trained VAE at 10-16 dB against 16-19 dB for frames 0-8).

Every ``log_every`` steps the held-out split's first ``validation_windows`` RGB windows are
reconstructed from their posterior means and their PSNR is logged and kept in the history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from factorportrait.data.dataset import DrawSampler, PortraitClipDataset
from factorportrait.data.format import MANIFEST_NAME
from factorportrait.io.atomic import atomic_write_bytes
from factorportrait.models.vae import WEIGHTS_FILE, VAEConfig, WanVAE
from factorportrait.training.distributed import training_device
from factorportrait.training.optim import WarmupDecay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VAETrainConfig:
    """Settings of :func:`train_vae` (``recipes/vae.yaml``). ``device``: ``cpu``, ``cuda`` or
    ``auto`` (CUDA when available); batches are read on the CPU and moved there."""

    root: str
    output_dir: str
    dim: int = 16
    frames: int = 5
    size: int = 64
    steps: int = 1000
    batch_size: int = 4
    lr: float = 3e-4
    kl_weight: float = 1e-6
    normals_fraction: float = 0.5
    seed: int = 0
    log_every: int = 50
    stats_batches: int = 16
    log_var_init: float | None = -8.0
    init_from: str | None = None
    warmup_steps: int = 0
    validation_windows: int = 4
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"vae.device must be cpu, cuda or auto, got {self.device!r}")
        if (self.frames - 1) % 4 or self.frames < 1:
            raise ValueError(f"vae.frames must be 4k+1, got {self.frames}")
        if self.size % 16 or self.size <= 0:
            raise ValueError(f"vae.size must be a positive multiple of 16, got {self.size}")
        for name in ("dim", "steps", "batch_size", "log_every", "stats_batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"vae.{name} must be positive, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.validation_windows < 0:
            raise ValueError(f"vae.warmup_steps and vae.validation_windows must be >= 0, got "
                             f"{self.warmup_steps} and {self.validation_windows}")
        if not 0 <= self.normals_fraction <= 1:
            raise ValueError(f"vae.normals_fraction must be in [0, 1], got "
                             f"{self.normals_fraction}")


def posterior(vae: WanVAE, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-normalised posterior ``(mu, log_var)``, each ``(B,16,F_lat,h,w)``, of ``video``.

    diffsynth's encoder keeps only the mean; its last 1x1 conv (``conv1``) outputs both, so a
    forward hook reads them there.
    """
    captured: dict[str, torch.Tensor] = {}
    handle = vae.model.conv1.register_forward_hook(
        lambda module, inputs, output: captured.__setitem__("stats", output))
    try:
        vae.model.encode(video, [torch.zeros(16), torch.ones(16)])
    finally:
        handle.remove()
    mu, log_var = captured["stats"].chunk(2, dim=1)
    return mu, log_var.clamp(-30.0, 20.0)


def vae_loss(vae: WanVAE, video: torch.Tensor, kl_weight: float,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 reconstruction of ``video (B,3,F,H,W)`` in [-1,1] from a posterior sample + KL."""
    mu, log_var = posterior(vae, video)
    noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
    z = mu + noise * torch.exp(0.5 * log_var)
    reconstruction = vae.model.decode(z, [torch.zeros(16), torch.ones(16)])
    l1 = (reconstruction - video).abs().mean()
    kl = 0.5 * (mu.square() + log_var.exp() - 1 - log_var).mean()
    return l1 + kl_weight * kl, {"l1": l1.item(), "kl": kl.item()}


def _batches(config: VAETrainConfig, dataset: PortraitClipDataset):
    from factorportrait.data.mixture import MixtureSampler

    ratios = {kind: 1.0 for kind in dataset.kind_to_indices()}
    sampler = MixtureSampler(dataset.kind_to_indices(), ratios, seed=config.seed)
    return iter(DataLoader(dataset, batch_size=config.batch_size,
                           sampler=DrawSampler(sampler), collate_fn=_collate))


def _collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {"video": torch.stack([s["video"] for s in samples]),
            "normals": torch.stack([s["normals"] for s in samples]),
            "has_normals": torch.tensor([bool(s["has_normals"]) for s in samples])}


def validation_windows(config: VAETrainConfig) -> torch.Tensor | None:
    """The held-out split's first ``validation_windows`` RGB windows ``(N,3,F,H,W)``, or None
    when the dataset has no held-out clips or none are asked for."""
    if config.validation_windows == 0:
        return None
    try:
        heldout = PortraitClipDataset(config.root, config.frames,
                                      size=(config.size, config.size), split="heldout",
                                      seed=config.seed)
    except ValueError:  # no held-out clips
        return None
    count = min(config.validation_windows, len(heldout))
    return torch.stack([heldout[i]["video"] for i in range(count)])


@torch.no_grad()
def reconstruction_psnr(vae: WanVAE, video: torch.Tensor) -> float:
    """Mean PSNR (dB, [-1,1] range) of ``video`` through the VAE (posterior mean, decoded)."""
    from factorportrait.evaluation import psnr

    decoded = vae.decode(vae.encode(video))
    return float(psnr(decoded.transpose(1, 2), video.transpose(1, 2), data_range=2.0).mean())


@torch.no_grad()
def latent_statistics(vae: WanVAE, batches, count: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of posterior means over ``count`` batches (RGB and normals)."""
    total = torch.zeros(16, dtype=torch.float64)
    square = torch.zeros(16, dtype=torch.float64)
    n = 0
    for _ in range(count):
        batch = next(batches)
        device = next(vae.parameters()).device
        for video in (batch["video"], batch["normals"][batch["has_normals"]]):
            if len(video) == 0:
                continue
            mu = posterior(vae, video.to(device))[0].double().cpu()
            total += mu.sum(dim=(0, 2, 3, 4))
            square += mu.square().sum(dim=(0, 2, 3, 4))
            n += mu.numel() // 16
    mean = total / n
    std = (square / n - mean.square()).clamp_min(1e-8).sqrt()
    return mean.tolist(), std.tolist()


def check_inputs(config: VAETrainConfig) -> torch.device:
    """What :func:`train_vae` needs before it starts: the dataset's manifest, ``init_from``
    and the device; ``ValueError`` naming the setting. Returns the device."""
    if config.init_from is not None and not Path(config.init_from).is_dir():
        raise ValueError(f"vae.init_from: no VAE folder at {config.init_from}")
    device = training_device(config.device, "vae.device")
    manifest = Path(config.root) / MANIFEST_NAME
    if not manifest.is_file():
        raise ValueError(f"vae.root {config.root}: no dataset there ({manifest.name} missing)")
    return device


def train_vae(config: VAETrainConfig) -> WanVAE:
    """Train a ``VAEConfig.small(config.dim)`` VAE and save it to ``config.output_dir``."""
    device = check_inputs(config)
    torch.manual_seed(config.seed)
    dataset = PortraitClipDataset(config.root, config.frames, size=(config.size, config.size),
                                  split="train", seed=config.seed)
    if config.init_from is not None:
        vae = WanVAE.load(config.init_from)
        if vae.config.dim != config.dim:
            raise ValueError(f"vae.init_from {config.init_from} has width {vae.config.dim}, "
                             f"vae.dim is {config.dim}")
    else:
        vae = WanVAE(VAEConfig.small(config.dim))
    vae.to(device)
    vae.model.requires_grad_(True).train()
    if config.log_var_init is not None and config.init_from is None:
        with torch.no_grad():  # start with a near-deterministic posterior (see module doc)
            vae.model.conv1.bias[vae.model.conv1.bias.shape[0] // 2:] = config.log_var_init
    optimizer = torch.optim.AdamW(vae.model.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupDecay(config.warmup_steps, config.steps))
    batches, generator = _batches(config, dataset), torch.Generator().manual_seed(config.seed)
    heldout = validation_windows(config)
    heldout = None if heldout is None else heldout.to(device)
    history = []
    for step in range(1, config.steps + 1):
        batch = next(batches)
        use_normals = (torch.rand((), generator=generator) < config.normals_fraction
                       and bool(batch["has_normals"].all()))
        video = (batch["normals"] if use_normals else batch["video"]).to(device)
        loss, parts = vae_loss(vae, video, config.kl_weight, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.append({"step": step, "loss": loss.item(), **parts})
        if step % config.log_every == 0 or step == config.steps:
            if heldout is not None:
                history[-1]["heldout_psnr"] = reconstruction_psnr(vae, heldout)
            log.info("vae step %d/%d loss %.4f l1 %.4f held-out PSNR %s", step, config.steps,
                     loss.item(), parts["l1"], history[-1].get("heldout_psnr", "-"))
    vae.model.requires_grad_(False).eval()
    mean, std = latent_statistics(vae, batches, config.stats_batches)
    trained = WanVAE(replace(vae.config, latent_mean=tuple(mean), latent_std=tuple(std)))
    trained.model.load_state_dict(vae.model.state_dict())
    output = Path(config.output_dir)
    trained.save_pretrained(output)
    atomic_write_bytes(output / "vae_training.json", json.dumps(
        {"config": asdict(config), "history": history}, indent=1).encode())
    return trained


def train_phases(phases: list[VAETrainConfig]) -> float:
    """Train ``phases`` in order (each usually ``init_from`` the one before) and return their
    seconds. A finished phase is kept when its settings and starting weights are unchanged
    (``<output_dir>/phase.json``), so an interrupted sequence resumes at the phase it was in,
    and a retrained phase retrains the ones after it."""
    seconds = 0.0
    for phase in phases:
        init = None if phase.init_from is None else hashlib.sha256(
            (Path(phase.init_from) / WEIGHTS_FILE).read_bytes()).hexdigest()
        settings = asdict(phase)
        settings.pop("device")  # where it trains, not what: a finished phase stays done
        inputs = {"config": settings, "init": init}
        path = Path(phase.output_dir) / "phase.json"
        record = json.loads(path.read_text()) if path.is_file() else {}
        if record.get("inputs") == inputs:
            log.info("vae phase %s: done already, skipped", phase.output_dir)
        else:
            path.unlink(missing_ok=True)
            start = time.perf_counter()
            train_vae(phase)
            record = {"inputs": inputs, "seconds": round(time.perf_counter() - start, 1)}
            atomic_write_bytes(path, json.dumps(record, indent=1).encode())
        seconds += record["seconds"]
    return seconds
