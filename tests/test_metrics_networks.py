"""LPIPS against the lpips package, Fréchet distances against closed forms, FID/FVD through
generated TorchScript detectors with the real ones' call signatures, and missing weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from factorportrait.evaluation.frechet import (
    FeatureAccumulator,
    FeatureStatistics,
    fid,
    frechet_distance,
    fvd,
    i3d_statistics,
    inception_statistics,
    load_i3d,
    load_inception,
    to_uint8,
)
from factorportrait.evaluation.networks import MissingWeightsError
from factorportrait.evaluation.perceptual import CHANNELS, load_lpips, lpips, shipped_heads

lpips_package = pytest.importorskip("lpips")
# lpips builds its trunk with torchvision's deprecated pretrained=; the detectors are TorchScript.
pytestmark = [pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")]


# --- LPIPS -----------------------------------------------------------------------------

def _torchvision_features(net: str, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    if net == "alex":
        return torchvision.models.alexnet(weights=None).features
    vgg = torchvision.models.vgg
    return vgg.make_layers(vgg.cfgs["D"], batch_norm=False)  # vgg16().features, cheaper


def _write_weights(net: str, tmp_path, seed: int = 0):
    """A torchvision-format backbone checkpoint and lpips-format heads, random."""
    features = _torchvision_features(net, seed)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(2, 2)  # other keys of the checkpoint: ignored
    backbone = tmp_path / f"{net}_backbone.pth"
    torch.save(state, backbone)
    g = torch.Generator().manual_seed(seed + 1)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
             for i, c in enumerate(CHANNELS[net])}
    heads_path = tmp_path / f"{net}_heads.pth"
    torch.save(heads, heads_path)
    return features, backbone, heads_path


def _reference(net: str, features: nn.Sequential, heads_path) -> nn.Module:
    """lpips.LPIPS with our heads file and the same backbone weights; pnet_rand=True builds
    its torchvision trunk without weights, so nothing is downloaded."""
    reference = lpips_package.LPIPS(net=net, pretrained=True, pnet_rand=True,
                                    model_path=str(heads_path), verbose=False)
    slices = [getattr(reference.net, f"slice{i}") for i in range(1, 6)]
    for piece in slices:  # its slices hold torchvision features[i] under the name str(i)
        for name, module in piece.named_children():
            module.load_state_dict(features[int(name)].state_dict())
    return reference.eval()


@pytest.mark.parametrize("net, size, count", [("alex", 64, 3), ("vgg", 32, 2)])
def test_lpips_matches_the_lpips_package(net, size, count, tmp_path):
    features, backbone, heads = _write_weights(net, tmp_path)
    ours = load_lpips(net, backbone=backbone, heads=heads)
    reference = _reference(net, features, heads)
    g = torch.Generator().manual_seed(2)
    prediction = torch.rand(count, 3, size, size, generator=g) * 2 - 1
    target = torch.rand(count, 3, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        expected = reference(prediction, target).flatten()
        got = lpips(prediction, target, ours)
        same = lpips(target, target, ours)
    assert got.shape == (count,)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (got, expected)
    assert torch.all(got > 0)
    assert torch.allclose(same, torch.zeros(count))


def test_lpips_keeps_leading_dims_and_checks_inputs(tmp_path):
    _, backbone, heads = _write_weights("alex", tmp_path)
    network = load_lpips("alex", backbone=backbone, heads=heads)
    g = torch.Generator().manual_seed(3)
    clips = torch.rand(2, 2, 3, 64, 64, generator=g) * 2 - 1
    other = torch.rand(2, 2, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        per_frame = lpips(clips, other, network)
        flat = lpips(clips.flatten(0, 1), other.flatten(0, 1), network)
    assert per_frame.shape == (2, 2)
    assert torch.allclose(per_frame.flatten(), flat, atol=1e-6)
    with pytest.raises(ValueError, match="target .* same shape"):
        lpips(clips, other[:, :1], network)
    with pytest.raises(ValueError, match=r"prediction must lie in \[-1, 1\]"):
        lpips(clips * 255, other, network)
    with pytest.raises(ValueError, match="target must be frames"):
        lpips(clips, other[..., 0, :, :], network)


def test_lpips_heads_default_to_the_lpips_package_file(tmp_path):
    _, backbone, _ = _write_weights("alex", tmp_path)
    shipped = shipped_heads("alex")
    assert shipped is not None and shipped.is_file()
    network = load_lpips("alex", backbone=backbone, heads=None)
    published = torch.load(shipped, map_location="cpu", weights_only=True)
    for i, head in enumerate(network.heads):
        assert torch.equal(head.weight, published[f"lin{i}.model.1.weight"])


# --- Fréchet distance --------------------------------------------------------------------

def test_frechet_distance_of_diagonal_gaussians():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(6, generator=g).double(), torch.randn(6, generator=g).double()
    var1 = torch.rand(6, generator=g).double() + 0.1
    var2 = torch.rand(6, generator=g).double() + 0.1
    expected = ((mu1 - mu2).square().sum()
                + (var1 + var2 - 2 * (var1 * var2).sqrt()).sum()).item()
    got = frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2))
    assert got == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, torch.diag(var1), mu1, torch.diag(var1)) == pytest.approx(
        0, abs=1e-12)


def test_frechet_distance_of_rotated_covariance():
    """Σ₂ = R Σ₁ Rᵀ with Σ₁ = diag(a, b) and R a rotation by θ in 2-D: Σ₁Σ₂ has trace
    (a² + b²) cos²θ + 2ab sin²θ and determinant a²b², so with its (real, positive)
    eigenvalues λ± Tr √(Σ₁Σ₂) = √λ₊ + √λ₋ = √(trace + 2ab)."""
    a, b, theta = 3.0, 0.5, 0.7
    rotation = np.array([[math.cos(theta), -math.sin(theta)],
                         [math.sin(theta), math.cos(theta)]])
    sigma1 = np.diag([a, b])
    sigma2 = rotation @ sigma1 @ rotation.T
    trace = (a**2 + b**2) * math.cos(theta) ** 2 + 2 * a * b * math.sin(theta) ** 2
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.0])
    expected = 0.25 + 4.0 + 2 * (a + b) - 2 * math.sqrt(trace + 2 * a * b)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10)


def test_streaming_statistics_equal_batch_statistics():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(1000, 12, generator=g) * torch.linspace(0.5, 3, 12) + 2.0
    accumulator = FeatureAccumulator()
    for chunk in features.split(77):
        accumulator.update(chunk)
    streamed, batch = accumulator.statistics(), FeatureStatistics.from_features(features)
    assert streamed.count == batch.count == 1000
    assert torch.allclose(streamed.mean, batch.mean, rtol=0, atol=1e-10)
    assert torch.allclose(streamed.covariance, batch.covariance, rtol=0, atol=1e-10)
    population = np.cov(features.double().numpy(), rowvar=False, bias=True)
    assert np.allclose(batch.covariance.numpy(), population, rtol=0, atol=1e-10)
    assert fid(batch, batch) == pytest.approx(0, abs=1e-8)


# --- FID / FVD through TorchScript detectors --------------------------------------------

class TinyInception(nn.Module):
    """The real detector's signature and preprocessing (uint8 NCHW with 3 channels, cast to
    float, resized, (x - 128) / 128), a linear map instead of Inception."""

    def __init__(self):
        super().__init__()
        self.project = nn.Linear(3 * 8 * 8, 16)
        self.classify = nn.Linear(16, 10)

    def forward(self, img: torch.Tensor, return_features: bool = False,
                use_fp16: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        if img.dtype != torch.uint8 or img.shape[1] != 3:
            raise RuntimeError("expected uint8 [N, 3, H, W]")
        x = F.interpolate(img.to(torch.float32), size=(8, 8), mode="bilinear",
                          align_corners=False)
        features = self.project(((x - 128) / 128).flatten(1))
        if return_features:
            return features
        return self.classify(features).softmax(dim=1)


class TinyI3D(nn.Module):
    """The real detector's keyword flags on uint8 [B, 3, T, H, W] (rescale to [-1, 1],
    resize spatially), a linear map instead of I3D."""

    def __init__(self, frames: int):
        super().__init__()
        self.project = nn.Linear(3 * frames * 6 * 6, 8)
        self.classify = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.shape[1] != 3:
            raise RuntimeError("expected uint8 [B, 3, T, H, W]")
        h = x.to(torch.float32)
        if rescale:
            h = h / 255 * 2 - 1
        if resize:
            h = F.interpolate(h, size=(h.shape[2], 6, 6), mode="trilinear", align_corners=False)
        logits = self.project(h.flatten(1))
        if return_features:
            return logits
        return self.classify(logits).softmax(dim=1)


def _scripted(module: nn.Module, path) -> nn.Module:
    torch.jit.script(module).save(str(path))
    return torch.jit.load(str(path))


def test_fid_through_a_torchscript_inception(tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.manual_seed(0)
    detector = _scripted(TinyInception(), path)
    network = load_inception(path)
    g = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 200, (70, 12, 10, 3), dtype=torch.uint8, generator=g)
    shifted = frames + 40
    with torch.no_grad():  # the way stylegan2-ada's metric_utils calls it: uint8 NCHW
        direct = detector(frames.permute(0, 3, 1, 2).contiguous(), return_features=True)
        direct_shifted = detector(shifted.permute(0, 3, 1, 2).contiguous(),
                                  return_features=True)
    real = inception_statistics(frames, network, batch_size=32)
    expected = FeatureStatistics.from_features(direct)
    assert real.count == 70
    assert torch.allclose(real.mean, expected.mean, atol=1e-6)
    assert torch.allclose(real.covariance, expected.covariance, atol=1e-6)
    streamed = inception_statistics(iter(frames.split(16)), network)
    assert torch.allclose(streamed.covariance, real.covariance, atol=1e-10)
    assert fid(real, real) == pytest.approx(0, abs=1e-6)
    fake = inception_statistics(shifted, network)
    mean_shift = (direct_shifted.double().mean(0) - direct.double().mean(0)).square().sum()
    assert fid(real, fake) == pytest.approx(mean_shift.item(), rel=1e-5)
    with pytest.raises(ValueError, match="must be uint8"):
        inception_statistics(frames.float(), network)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        inception_statistics(frames.permute(0, 3, 1, 2), network)


def test_fvd_through_a_torchscript_i3d(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.manual_seed(0)
    detector = _scripted(TinyI3D(frames=4), path)
    network = load_i3d(path)
    g = torch.Generator().manual_seed(5)
    videos = torch.randint(0, 200, (24, 4, 9, 11, 3), dtype=torch.uint8, generator=g)
    shifted = videos + 30
    with torch.no_grad():  # the way stylegan-v's metric_utils calls it: uint8 [B, C, T, H, W]
        kwargs = {"rescale": True, "resize": True, "return_features": True}
        direct = detector(videos.permute(0, 4, 1, 2, 3).contiguous(), **kwargs)
        direct_shifted = detector(shifted.permute(0, 4, 1, 2, 3).contiguous(), **kwargs)
    real = i3d_statistics(videos, network, batch_size=5)
    expected = FeatureStatistics.from_features(direct)
    assert torch.allclose(real.mean, expected.mean, atol=1e-6)
    assert torch.allclose(real.covariance, expected.covariance, atol=1e-6)
    assert fvd(real, real) == pytest.approx(0, abs=1e-6)
    mean_shift = (direct_shifted.double().mean(0) - direct.double().mean(0)).square().sum()
    assert fvd(real, i3d_statistics(shifted, network)) == pytest.approx(mean_shift.item(),
                                                                        rel=1e-5)


def test_to_uint8_rounds_like_stylegan():
    frames = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 1.2]).view(1, 1, 6).expand(3, 1, 6)
    got = to_uint8(frames)
    assert got.shape == (1, 6, 3) and got.dtype == torch.uint8
    assert got[0, :, 0].tolist() == [0, 64, 128, 255, 255, 255]


# --- Missing weights ---------------------------------------------------------------------

def _assert_missing(call, filename: str):
    with pytest.raises(MissingWeightsError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and filename in message and "published at" in message


def test_missing_weights_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _assert_missing(lambda: load_lpips(backbone=tmp_path / "nope.pth"), "nope.pth")
    _assert_missing(lambda: load_inception(tmp_path / "x.pt"), "x.pt")
    _assert_missing(lambda: load_i3d(None), "i3d_torchscript.pt")
    _assert_missing(lambda: load_inception(None), "inception-2015-12-05.pt")
