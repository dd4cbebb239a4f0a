"""Image-quality metrics on frame batches, as in FactorPortrait §5.1 ("Image quality").

Both metrics take frames ``(..., C, H, W)`` (any leading dims, e.g. ``(F, 3, H, W)``) and
return one value per leading index, averaged over channels and pixels; average over frames
yourself. ``data_range`` is the span of valid values: 2 for [-1, 1], 1 for [0, 1], 255 for
uint8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_pair(prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target "
                         f"{tuple(target.shape)} must have the same shape")
    if prediction.ndim < 3:
        raise ValueError(f"expected frames (..., C, H, W), got {tuple(prediction.shape)}")


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(range² / MSE)`` per frame ``(...)``.

    Identical frames give ``inf``.
    """
    _check_pair(prediction, target)
    error = (prediction.double() - target.double()).square().mean(dim=(-3, -2, -1))
    return (10 * torch.log10(data_range**2 / error)).float()


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    kernel = torch.exp(-coords.square() / (2 * sigma**2))
    return kernel / kernel.sum()


def ssim(prediction: torch.Tensor, target: torch.Tensor, data_range: float,
         window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per frame ``(...)``.

    Gaussian window of ``window`` taps and ``sigma`` 1.5, K1 = 0.01, K2 = 0.03, population
    statistics, mean over the valid (unpadded) region and channels — the settings of
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``.
    """
    _check_pair(prediction, target)
    *lead, channels, height, width = prediction.shape
    if min(height, width) < window:
        raise ValueError(f"frames must be at least {window}x{window} for SSIM, got "
                         f"{height}x{width}")
    x = prediction.double().reshape(-1, 1, height, width)
    y = target.double().reshape(-1, 1, height, width)
    kernel = _gaussian_window(window, sigma, torch.float64)

    def blur(image: torch.Tensor) -> torch.Tensor:  # separable, valid region only
        image = F.conv2d(image, kernel.view(1, 1, 1, -1))
        return F.conv2d(image, kernel.view(1, 1, -1, 1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
             / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2)))
    per_channel = score.mean(dim=(-2, -1)).reshape(*lead, channels)
    return per_channel.mean(dim=-1).float()
