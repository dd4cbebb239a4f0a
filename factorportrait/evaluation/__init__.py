"""Evaluation: the field's metrics as functions of tensors, and per-control accuracy.

- ``metrics``: PSNR, SSIM.
- ``perceptual``: LPIPS (torchvision AlexNet/VGG + the published linear heads, from files).
- ``identity``: CSIM (insightface ArcFace ONNX through onnxruntime, 5-point alignment).
- ``motion``: APD and AED with MediaPipe (tracked head pose; pose-normalised landmark offsets,
  or FaceLandmarker blendshapes).
- ``frechet``: FID and FVD (StyleGAN's Inception and StyleGAN-V's I3D TorchScript files).
- ``controls``: per-control accuracy on synthetic ground truth (silhouette IoU, the expression
  encoder's readout, colour distance), from generated frames alone.
- ``networks``: where metric weights come from (files the user names; never a download).
- ``results`` / ``report``: the results-folder layout and the scorer behind
  ``tools/evaluate.py`` (docs/evaluation.md).

Heavy pieces (onnxruntime, mediapipe, scipy, torchvision models) load on first use of their
module; ``from factorportrait.evaluation import psnr`` stays light.
"""

from factorportrait.evaluation.metrics import psnr, ssim
from factorportrait.evaluation.networks import MissingWeightsError

__all__ = ["MissingWeightsError", "psnr", "ssim"]
