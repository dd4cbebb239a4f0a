"""Fréchet distances between Gaussian fits of network features: FID (Heusel et al. 2017) on
Inception-v3 pool features of frames, FVD (Unterthiner et al. 2018) on I3D logits of clips.

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)

Both networks are the TorchScript files the field's reference code scores with, loaded from a
file the caller names (:func:`load_inception`, :func:`load_i3d`), never downloaded:

- FID: StyleGAN2-ADA's ``inception-2015-12-05.pt`` (a translation of the TF Inception graph),
  called as NVlabs/stylegan2-ada-pytorch ``metrics/frechet_inception_distance.py`` and
  ``metrics/metric_utils.py`` do.
- FVD: StyleGAN-V's ``i3d_torchscript.pt`` (the tf.hub Kinetics-400 I3D), called as
  universome/stylegan-v ``src/metrics/frechet_video_distance.py`` and
  ``src/metrics/metric_utils.py`` do.

Statistics follow those files' ``FeatureStats``: float64 sums of features and of their outer
products, and the population covariance (divide by N, not N − 1).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import nn

from factorportrait.evaluation.networks import PathLike, weights_file

Frames = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class FeatureStatistics:
    """Gaussian fit of ``count`` feature vectors: ``mean (D,)`` and population
    ``covariance (D, D)``, both float64."""

    mean: torch.Tensor
    covariance: torch.Tensor
    count: int

    def __post_init__(self):
        dim = self.mean.shape[0]
        if self.mean.ndim != 1 or self.covariance.shape != (dim, dim):
            raise ValueError(f"statistics need mean (D,) and covariance (D, D), got "
                             f"{tuple(self.mean.shape)} and {tuple(self.covariance.shape)}")

    @classmethod
    def from_features(cls, features: torch.Tensor) -> FeatureStatistics:
        """Statistics of features ``(N, D)`` held in memory (two-pass, float64)."""
        features = _check_features(features)
        mean = features.mean(dim=0)
        centered = features - mean
        return cls(mean, centered.T @ centered / features.shape[0], features.shape[0])


def _check_features(features: torch.Tensor) -> torch.Tensor:
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be (N, D) with N >= 1, got {tuple(features.shape)}")
    return features.detach().to("cpu", torch.float64)


class FeatureAccumulator:
    """Streaming statistics: float64 running sums of features and of their outer products
    (StyleGAN2-ADA ``FeatureStats(capture_mean_cov=True)``), so large sets need not be held."""

    def __init__(self):
        self.count = 0
        self.total: torch.Tensor | None = None  # (D,)
        self.outer: torch.Tensor | None = None  # (D, D)

    def update(self, features: torch.Tensor) -> None:
        """Add features ``(N, D)``."""
        features = _check_features(features)
        if self.total is None:
            self.total = features.new_zeros(features.shape[1])
            self.outer = features.new_zeros(features.shape[1], features.shape[1])
        if features.shape[1] != self.total.shape[0]:
            raise ValueError(f"features have dimension {features.shape[1]}, earlier ones "
                             f"{self.total.shape[0]}")
        self.count += features.shape[0]
        self.total += features.sum(dim=0)
        self.outer += features.T @ features

    def statistics(self) -> FeatureStatistics:
        if self.count == 0:
            raise ValueError("no features were accumulated")
        mean = self.total / self.count
        return FeatureStatistics(mean, self.outer / self.count - torch.outer(mean, mean),
                                 self.count)


def _float64(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return torch.as_tensor(array).detach().to("cpu", torch.float64).numpy()


def frechet_distance(mu1: torch.Tensor | np.ndarray, sigma1: torch.Tensor | np.ndarray,
                     mu2: torch.Tensor | np.ndarray, sigma2: torch.Tensor | np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1 (D,), sigma1 (D, D)) and N(mu2, sigma2), in float64.

    ``scipy.linalg.sqrtm`` of Σ₁Σ₂ as in pytorch-fid and StyleGAN's metric code; when the
    product is singular and the root is not finite, ``eps`` is added to both diagonals
    (pytorch-fid's fallback). The root's real part is taken (StyleGAN's ``np.real``).
    """
    mu1, sigma1, mu2, sigma2 = map(_float64, (mu1, sigma1, mu2, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"Fréchet distance needs matching mean (D,) and covariance (D, D), "
                         f"got {mu1.shape}, {sigma1.shape} and {mu2.shape}, {sigma2.shape}")
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = np.eye(mu1.shape[0]) * eps
        root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    difference = mu1 - mu2
    return float(difference @ difference
                 + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root.real))


def fid(real: FeatureStatistics, fake: FeatureStatistics) -> float:
    """Fréchet Inception Distance between the statistics of two frame sets
    (:func:`inception_statistics`; StyleGAN reports it on 50k generated frames)."""
    return frechet_distance(real.mean, real.covariance, fake.mean, fake.covariance)


def fvd(real: FeatureStatistics, fake: FeatureStatistics) -> float:
    """Fréchet Video Distance between the statistics of two clip sets
    (:func:`i3d_statistics`; StyleGAN-V's ``fvd2048_16f`` uses 2048 clips of 16 frames)."""
    return frechet_distance(real.mean, real.covariance, fake.mean, fake.covariance)


def _device(module: nn.Module) -> torch.device:
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def _uint8_channels_last(name: str, array: Frames, ndim: int, layout: str) -> torch.Tensor:
    array = torch.as_tensor(array)
    if array.ndim != ndim or array.shape[-1] != 3:
        raise ValueError(f"{name} must be {layout} with 3 channels last, got "
                         f"{tuple(array.shape)}")
    if array.dtype != torch.uint8:
        raise ValueError(f"{name} must be uint8 (0..255), got {array.dtype}; see to_uint8")
    return array


class InceptionFeatures(nn.Module):
    """2048-d pool features of StyleGAN2-ADA's Inception-v3 TorchScript.

    Call convention (stylegan2-ada-pytorch ``metrics/frechet_inception_distance.py``:
    ``detector_kwargs = dict(return_features=True)``; ``metrics/metric_utils.py``:
    ``detector(images, **detector_kwargs)`` on the dataset's or generator's uint8 images
    ``[N, 3, H, W]``, 0..255, any size; generator output is ``(x * 127.5 + 128).clamp(0, 255)
    .to(torch.uint8)``). The module casts to float, resizes to 299x299 and maps to [-1, 1]
    itself.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, frames: Frames) -> torch.Tensor:
        """Features ``(N, 2048)`` of uint8 frames ``(N, H, W, 3)``."""
        frames = _uint8_channels_last("Inception frames", frames, 4, "(N, H, W, 3)")
        images = frames.permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
        return self.detector(images.to(_device(self.detector)), return_features=True)


class I3DFeatures(nn.Module):
    """Logits before the softmax (400, one per Kinetics-400 class, as in the TF FVD code)
    of StyleGAN-V's I3D TorchScript.

    Call convention (stylegan-v ``src/metrics/frechet_video_distance.py``:
    ``detector_kwargs = dict(rescale=True, resize=True, return_features=True)``;
    ``src/metrics/metric_utils.py``: dataset clips ``[B, T, C, H, W]`` are permuted to
    ``[B, C, T, H, W]`` and made contiguous, generator clips are uint8 via
    ``(x * 127.5 + 128).clamp(0, 255).to(torch.uint8)``, then ``detector(videos,
    **detector_kwargs)``). So the input is uint8 0..255 ``[B, 3, T, H, W]``; ``rescale``
    maps it to [-1, 1] and ``resize`` to 224x224 inside the module. StyleGAN-V scores
    16-frame clips (``fvd2048_16f``), batches of 128 frames (8 clips).
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, videos: Frames) -> torch.Tensor:
        """Logits ``(B, 400)`` of uint8 clips ``(B, T, H, W, 3)``."""
        videos = _uint8_channels_last("I3D videos", videos, 5, "(B, T, H, W, 3)")
        clips = videos.permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, H, W) uint8
        return self.detector(clips.to(_device(self.detector)), rescale=True, resize=True,
                             return_features=True)


def _load_script(name: str, path: PathLike | None,
                 device: str | torch.device) -> torch.jit.ScriptModule:
    file = weights_file(name, path)
    with warnings.catch_warnings():  # torch's notice that TorchScript is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(file), map_location=device).eval()


def load_inception(path: PathLike | None = None,
                   device: str | torch.device = "cpu") -> InceptionFeatures:
    """The FID network from ``inception-2015-12-05.pt`` (``path``, else the usual cache
    locations); raises :class:`~factorportrait.evaluation.networks.MissingWeightsError`."""
    return InceptionFeatures(_load_script("inception", path, device))


def load_i3d(path: PathLike | None = None, device: str | torch.device = "cpu") -> I3DFeatures:
    """The FVD network from ``i3d_torchscript.pt`` (``path``, else the usual cache
    locations); raises :class:`~factorportrait.evaluation.networks.MissingWeightsError`."""
    return I3DFeatures(_load_script("i3d", path, device))


def _batches(items: Frames | Iterable[Frames], batch_size: int) -> Iterator[Frames]:
    if isinstance(items, (torch.Tensor, np.ndarray)):
        yield from (items[start:start + batch_size] for start in range(0, len(items), batch_size))
    else:
        yield from items


@torch.no_grad()
def _statistics(items: Frames | Iterable[Frames], network: nn.Module,
                batch_size: int) -> FeatureStatistics:
    accumulator = FeatureAccumulator()
    for batch in _batches(items, batch_size):
        accumulator.update(network(batch))
    return accumulator.statistics()


def inception_statistics(frames: Frames | Iterable[Frames], network: InceptionFeatures,
                         batch_size: int = 64) -> FeatureStatistics:
    """FID statistics (D = 2048) of uint8 frames ``(N, H, W, 3)``, run ``batch_size`` at a
    time, or of an iterable of such batches (streamed, never held together)."""
    return _statistics(frames, network, batch_size)


def i3d_statistics(videos: Frames | Iterable[Frames], network: I3DFeatures,
                   batch_size: int = 8) -> FeatureStatistics:
    """FVD statistics (D = 400) of uint8 clips ``(B, T, H, W, 3)``, run ``batch_size`` at a
    time, or of an iterable of such batches (streamed, never held together)."""
    return _statistics(videos, network, batch_size)


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Frames ``(..., 3, H, W)`` in [-1, 1] as uint8 ``(..., H, W, 3)``, rounded as
    StyleGAN's metric code does: ``(x * 127.5 + 128).clamp(0, 255)`` truncated."""
    if frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"frames must be (..., 3, H, W), got {tuple(frames.shape)}")
    return (frames * 127.5 + 128).clamp(0, 255).to(torch.uint8).movedim(-3, -1)
