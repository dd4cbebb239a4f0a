"""LPIPS, the learned perceptual distance of Zhang et al. 2018 ("The Unreasonable
Effectiveness of Deep Features as a Perceptual Metric"), version 0.1, alex and vgg variants.

The network is a torchvision feature stack tapped after five ReLUs, with a published 1x1
linear head per tap. Both come from files the caller names (:func:`load_lpips`); nothing is
downloaded. The arithmetic is that of the ``lpips`` package (``lpips.LPIPS.forward``):

    d(x, y) = Σ_l mean_hw( w_l · (f̂_l(x) − f̂_l(y))² ),   f̂ = f / (‖f‖_channels + 1e-10)

on inputs first shifted and scaled by its ``ScalingLayer``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torchvision
from torch import nn

from factorportrait.evaluation.networks import PathLike, weights_file
from factorportrait.io.tensors import read_torch_weights

# Feature indices whose outputs are tapped (after the ReLU), as the slices of the lpips
# package's ``pretrained_networks.alexnet`` / ``vgg16`` end: alex relu1..relu5,
# vgg relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
_BACKBONE_WEIGHTS = {"alex": "alexnet", "vgg": "vgg16"}
_HEADS_WEIGHTS = {"alex": "lpips_alex", "vgg": "lpips_vgg"}

# lpips' ScalingLayer: (x - shift) / scale, per RGB channel.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_RANGE_SLACK = 0.05  # frames a decoder left slightly outside [-1, 1] are still accepted


def _feature_stack(net: str) -> nn.Sequential:
    if net == "alex":
        return torchvision.models.alexnet(weights=None).features
    # torchvision's vgg16() is VGG(make_layers(cfgs["D"])); building only the feature stack
    # skips initialising the 120M-parameter classifier LPIPS never uses.
    vgg = torchvision.models.vgg
    return vgg.make_layers(vgg.cfgs["D"], batch_norm=False)


def _check_frames(prediction: torch.Tensor, target: torch.Tensor) -> None:
    for name, frames in (("prediction", prediction), ("target", target)):
        if frames.ndim < 4 or frames.shape[-3] != 3:
            raise ValueError(f"LPIPS {name} must be frames (..., 3, H, W), got "
                             f"{tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise ValueError(f"LPIPS {name} must be float frames in [-1, 1], got {frames.dtype}")
        if frames.numel() and frames.abs().max().item() > 1 + _RANGE_SLACK:
            raise ValueError(f"LPIPS {name} must lie in [-1, 1], got values in "
                             f"[{frames.min().item():.3g}, {frames.max().item():.3g}]")
    if prediction.shape != target.shape:
        raise ValueError(f"LPIPS prediction {tuple(prediction.shape)} and target "
                         f"{tuple(target.shape)} must have the same shape")


def _unit_channels(features: torch.Tensor) -> torch.Tensor:
    """lpips ``normalize_tensor``: ``(N, C, h, w)`` divided by its channel norm + 1e-10."""
    norm = features.square().sum(dim=1, keepdim=True).sqrt()
    return features / (norm + 1e-10)


class LPIPS(nn.Module):
    """LPIPS v0.1 with an ``"alex"`` or ``"vgg"`` trunk; random weights until loaded
    (:func:`load_lpips` loads the published ones).

    ``features`` holds torchvision's ``alexnet().features`` / ``vgg16().features`` up to the
    last tap (same module indices, so a torchvision checkpoint's ``features.*`` keys load);
    ``heads[l]`` is the 1x1 convolution ``lin{l}.model.1`` of the lpips package.
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in TAPS:
            raise ValueError(f"LPIPS net must be one of {sorted(TAPS)}, got {net!r}")
        self.net = net
        self.taps = TAPS[net]
        self.features = _feature_stack(net)[: self.taps[-1] + 1]
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False)
                                   for c in CHANNELS[net])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def tapped(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five tapped activations ``(N, C_l, h_l, w_l)`` of images ``(N, 3, H, W)``."""
        h = (images - self.shift) / self.scale
        taps = []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in self.taps:
                taps.append(h)
        return taps

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Distance per frame ``(...)`` between frames ``(..., 3, H, W)`` in [-1, 1]."""
        _check_frames(prediction, target)
        lead, image_shape = prediction.shape[:-3], prediction.shape[-3:]
        count = prediction[..., 0, 0, 0].numel()
        both = torch.cat([prediction.reshape(-1, *image_shape),
                          target.reshape(-1, *image_shape)]).to(self.shift)
        distance = both.new_zeros(count)
        for head, features in zip(self.heads, self.tapped(both)):
            x, y = _unit_channels(features).split(count)
            distance = distance + head((x - y).square()).mean(dim=(1, 2, 3))  # (N,)
        return distance.reshape(lead)


def shipped_heads(net: str) -> Path | None:
    """The v0.1 heads file inside the installed ``lpips`` package, if it is installed
    (found without importing it)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "weights" / "v0.1" / f"{net}.pth"


def _backbone_state(state: dict[str, torch.Tensor], keys: list[str],
                    path: Path) -> dict[str, torch.Tensor]:
    """``features.<i>.*`` of a torchvision checkpoint, keyed as ``LPIPS.features`` is."""
    features = {k.removeprefix("features."): v for k, v in state.items()
                if k.startswith("features.")}
    missing = sorted(set(keys) - set(features))
    if missing:
        raise ValueError(f"{path} is not a torchvision backbone checkpoint for LPIPS "
                         f"(no features.{missing[0]})")
    return {k: features[k] for k in keys}


def _heads_state(state: dict[str, torch.Tensor], layers: int,
                 path: Path) -> dict[str, torch.Tensor]:
    """The lpips package's ``lin<l>.model.1.weight`` keyed as ``LPIPS.heads`` is."""
    heads = {}
    for layer in range(layers):
        key = f"lin{layer}.model.1.weight"
        if key not in state:
            raise ValueError(f"{path} is not an LPIPS heads file (no {key})")
        heads[f"{layer}.weight"] = state[key]
    return heads


def load_lpips(net: str = "alex", backbone: PathLike | None = None,
               heads: PathLike | None = None, device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS v0.1 with the published weights, frozen and in eval mode.

    ``backbone``: torchvision's ImageNet checkpoint (``alexnet-owt-7be5be79.pth`` /
    ``vgg16-397923af.pth``); ``heads``: the lpips package's ``alex.pth`` / ``vgg.pth``.
    Unnamed files are looked up in the usual places (the lpips package's own heads first);
    a file that is nowhere raises :class:`~factorportrait.evaluation.networks.MissingWeightsError`.
    """
    if net not in TAPS:
        raise ValueError(f"LPIPS net must be one of {sorted(TAPS)}, got {net!r}")
    backbone_path = weights_file(_BACKBONE_WEIGHTS[net], backbone)
    shipped = shipped_heads(net)
    heads_path = weights_file(_HEADS_WEIGHTS[net], heads,
                              extra_locations=[shipped] if shipped is not None else [])
    network = LPIPS(net)
    backbone_state = read_torch_weights(backbone_path, "LPIPS backbone weights")
    heads_state = read_torch_weights(heads_path, "LPIPS linear heads")
    network.features.load_state_dict(_backbone_state(
        backbone_state, list(network.features.state_dict()), backbone_path))
    network.heads.load_state_dict(_heads_state(heads_state, len(network.heads), heads_path))
    return network.requires_grad_(False).eval().to(device)


def lpips(prediction: torch.Tensor, target: torch.Tensor, network: LPIPS) -> torch.Tensor:
    """LPIPS per frame ``(...)`` between frames ``(..., 3, H, W)`` in [-1, 1]; lower is
    more similar, identical frames give 0. Average over frames yourself."""
    return network(prediction, target)
