"""PSNR and SSIM against analytic values and scikit-image's reference implementation."""

import math

import numpy as np
import pytest
import torch

from factorportrait.evaluation import psnr, ssim


def test_psnr_analytic_values():
    target = torch.zeros(2, 3, 8, 8)
    prediction = target + 0.1  # MSE 0.01 on range 1 -> 20 dB
    assert torch.allclose(psnr(prediction, target, data_range=1.0), torch.tensor([20.0, 20.0]))
    assert math.isinf(psnr(target, target, data_range=1.0)[0].item())
    noisy = target.clone()
    noisy[0, 0, 0, 0] = 255.0  # one pixel of 192 fully wrong on 255 range
    assert psnr(noisy, target, 255.0)[0].item() == pytest.approx(10 * math.log10(192), abs=1e-4)


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 40, 48, generator=g)
    prediction = (target + 0.1 * torch.randn(3, 3, 40, 48, generator=g)).clamp(0, 1)
    ours = ssim(prediction, target, data_range=1.0)
    for i in range(3):
        reference = metrics.structural_similarity(
            prediction[i].numpy().astype(np.float64), target[i].numpy().astype(np.float64),
            channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(reference, abs=1e-5)
    assert torch.allclose(ssim(target, target, 1.0), torch.ones(3))


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9), 1.0)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), 1.0)
