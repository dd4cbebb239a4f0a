"""Losses of the motion trainer's GAN (DeX §3.2): reconstruction of the driving frame,
adversarial terms for the generator and the discriminator, discriminator feature matching,
and an optional VGG19 perceptual loss.

All images are ``(B, 3, H, W)`` in [-1, 1]; every loss returns a scalar tensor. The
discriminator outputs are those of
:class:`~factorportrait.motion.discriminator.PatchDiscriminator`: per scale, a list of
activations whose last entry is that scale's patch logits.

The perceptual loss (pix2pixHD's ``VGGLoss``: L1 between VGG19 activations after relu1_1 …
relu5_1, weighted 1/32 … 1) needs torchvision's published ImageNet VGG19 weights; they are
read from the file the caller names (:func:`load_vgg_perceptual`) and never downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from factorportrait.evaluation.networks import MissingWeightsError, PathLike
from factorportrait.io.tensors import read_torch_weights

ADVERSARIAL_KINDS = ("hinge", "non_saturating")
VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
# torchvision vgg19().features indices after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
# and pix2pixHD's weights for them.
VGG_TAPS = (1, 6, 11, 20, 29)
VGG_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Outputs = list[list[Tensor]]  # per scale, the discriminator's activations (logits last)


def reconstruction_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error ``mean |prediction − target|`` of ``(B, 3, H, W)`` images."""
    return (prediction - target).abs().mean()


def pyramid_l1_loss(prediction: Tensor, target: Tensor, levels: int = 4) -> Tensor:
    """Multi-scale L1: the mean over ``levels`` pyramid levels (level k = both images
    average-pooled k times by 2) of :func:`reconstruction_loss`."""
    if levels < 1:
        raise ValueError(f"pyramid_l1_loss: levels must be >= 1, got {levels}")
    total = prediction.new_zeros(())
    for level in range(levels):
        if level:
            prediction, target = F.avg_pool2d(prediction, 2), F.avg_pool2d(target, 2)
        total = total + reconstruction_loss(prediction, target)
    return total / levels


def _check_kind(kind: str) -> None:
    if kind not in ADVERSARIAL_KINDS:
        raise ValueError(f"adversarial loss kind must be one of {ADVERSARIAL_KINDS}, "
                         f"got {kind!r}")


def generator_adversarial_loss(fake: Outputs, kind: str = "hinge") -> Tensor:
    """The generator's adversarial loss on the discriminator's outputs for generated images,
    averaged over scales: hinge ``−mean D(G)``; non-saturating ``mean softplus(−D(G))``
    (``= −log sigmoid D(G)``)."""
    _check_kind(kind)
    logits = [scale[-1] for scale in fake]
    if kind == "hinge":
        losses = [-x.mean() for x in logits]
    else:
        losses = [F.softplus(-x).mean() for x in logits]
    return torch.stack(losses).mean()


def discriminator_adversarial_loss(real: Outputs, fake: Outputs, kind: str = "hinge"
                                   ) -> Tensor:
    """The discriminator's loss, averaged over scales: hinge ``mean relu(1 − D(x)) +
    mean relu(1 + D(G))``; non-saturating ``mean softplus(−D(x)) + mean softplus(D(G))``.
    Pass ``fake`` computed on detached generated images."""
    _check_kind(kind)
    losses = []
    for real_scale, fake_scale in zip(real, fake, strict=True):
        r, f = real_scale[-1], fake_scale[-1]
        if kind == "hinge":
            losses.append(F.relu(1 - r).mean() + F.relu(1 + f).mean())
        else:
            losses.append(F.softplus(-r).mean() + F.softplus(f).mean())
    return torch.stack(losses).mean()


def feature_matching_loss(real: Outputs, fake: Outputs) -> Tensor:
    """pix2pixHD's feature matching: the mean over scales and intermediate layers (the logits
    left out) of ``mean |D_l(G) − D_l(x)|``, the real activations detached."""
    losses = [(f - r.detach()).abs().mean()
              for real_scale, fake_scale in zip(real, fake, strict=True)
              for r, f in zip(real_scale[:-1], fake_scale[:-1], strict=True)]
    if not losses:
        raise ValueError("feature_matching_loss: the discriminator has no intermediate layers")
    return torch.stack(losses).mean()


class VGGPerceptualLoss(nn.Module):
    """``Σ_l w_l · mean |φ_l(x) − φ_l(y)|`` over VGG19 activations ``φ_l`` at ``taps``
    (torchvision ``vgg19().features`` indices, default relu1_1 … relu5_1) with weights
    ``weights``; images ``(B, 3, H, W)`` in [-1, 1] are mapped to ImageNet-normalised [0, 1].

    Random weights until loaded (:func:`load_vgg_perceptual`); the target's activations are
    not differentiated. The stack is built only up to the last tap.
    """

    def __init__(self, taps: tuple[int, ...] = VGG_TAPS,
                 weights: tuple[float, ...] = VGG_WEIGHTS):
        super().__init__()
        if len(taps) != len(weights) or not taps or list(taps) != sorted(set(taps)):
            raise ValueError(f"VGGPerceptualLoss: taps {taps} must be increasing and as many "
                             f"as the weights {weights}")
        vgg = torchvision.models.vgg
        self.features = vgg.make_layers(vgg.cfgs["E"], batch_norm=False)[: taps[-1] + 1]
        self.taps, self.weights = tuple(taps), tuple(weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    def activations(self, images: Tensor) -> list[Tensor]:
        """The tapped activations ``(B, C_l, H_l, W_l)`` of ``(B, 3, H, W)`` in [-1, 1]."""
        x = ((images + 1) / 2 - self.mean) / self.std
        tapped = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                tapped.append(x)
        return tapped

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            targets = self.activations(target)
        total = prediction.new_zeros(())
        for weight, p, t in zip(self.weights, self.activations(prediction), targets):
            total = total + weight * (p - t).abs().mean()
        return total


def load_vgg_perceptual(path: PathLike, taps: tuple[int, ...] = VGG_TAPS,
                        weights: tuple[float, ...] = VGG_WEIGHTS,
                        device: str | torch.device = "cpu") -> VGGPerceptualLoss:
    """A frozen :class:`VGGPerceptualLoss` with the ImageNet weights of torchvision's published
    VGG19 (``vgg19-dcbb9e9d.pth``) read from ``path``; nothing is downloaded.

    Raises :class:`~factorportrait.evaluation.networks.MissingWeightsError` (a
    ``FileNotFoundError``, one line) when ``path`` does not exist, ``ValueError`` naming the
    file when it is not a torchvision VGG19 checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"VGG perceptual loss: {path} does not exist; it must be torchvision's published "
            f"vgg19 ImageNet weights ({VGG19_FILE}, {VGG19_URL}); nothing is downloaded")
    state = read_torch_weights(path, "torchvision vgg19 weights")
    network = VGGPerceptualLoss(taps, weights)
    expected = network.features.state_dict()
    features = {}
    for key, value in expected.items():
        stored = state.get(f"features.{key}")
        if stored is None or stored.shape != value.shape:
            found = None if stored is None else tuple(stored.shape)
            raise ValueError(f"{path} is not torchvision's vgg19 checkpoint: features.{key} "
                             f"should be {tuple(value.shape)}, found {found}")
        features[key] = stored
    network.features.load_state_dict(features)
    return network.requires_grad_(False).eval().to(device)
