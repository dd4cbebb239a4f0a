"""Evaluation: image-quality metrics (PSNR, SSIM) and, later, controllability metrics."""

from factorportrait.evaluation.metrics import psnr, ssim

__all__ = ["psnr", "ssim"]
