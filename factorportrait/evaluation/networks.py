"""Where the metric networks' weights come from: files the user names, never a download.

LPIPS, CSIM, FID and FVD are defined by published pretrained networks. None can be fetched
here (and a metric should not fetch anything), so each is loaded from a file the caller names;
when none is named, the usual cache locations are tried (``$TORCH_HOME/hub/checkpoints`` for
torchvision files, ``~/.insightface/models/buffalo_l`` for ArcFace, the ``lpips`` package's own
linear heads). A file that is nowhere is one line, :class:`MissingWeightsError`, naming the
file and where it is published.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PathLike = str | os.PathLike


class MissingWeightsError(FileNotFoundError):
    """A metric network's weights file is missing (names the file and where it is published)."""


@dataclass(frozen=True)
class PublishedWeights:
    """A published weights file: its usual ``filename``, the ``url`` it is published at, and
    the ``option`` (CLI flag / argument) that names it."""

    what: str
    filename: str
    url: str
    option: str

    def default_locations(self) -> list[Path]:
        torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
        places = [torch_home / "hub" / "checkpoints" / self.filename,
                  Path.home() / ".insightface" / "models" / "buffalo_l" / self.filename,
                  Path.home() / ".cache" / "factorportrait" / "metrics" / self.filename]
        return places


PUBLISHED = {
    "alexnet": PublishedWeights(
        "LPIPS backbone (torchvision AlexNet)", "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "--lpips-backbone"),
    "vgg16": PublishedWeights(
        "LPIPS backbone (torchvision VGG16)", "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth", "--lpips-backbone"),
    "lpips_alex": PublishedWeights(
        "LPIPS linear heads (alex, v0.1)", "alex.pth",
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth"
        " (also inside the `lpips` PyPI package)", "--lpips-heads"),
    "lpips_vgg": PublishedWeights(
        "LPIPS linear heads (vgg, v0.1)", "vgg.pth",
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
        " (also inside the `lpips` PyPI package)", "--lpips-heads"),
    "arcface": PublishedWeights(
        "CSIM network (insightface ArcFace R50, ONNX)", "w600k_r50.onnx",
        "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip "
        "(w600k_r50.onnx inside)", "--arcface"),
    "inception": PublishedWeights(
        "FID network (Inception-v3 TorchScript)", "inception-2015-12-05.pt",
        "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
        "inception-2015-12-05.pt", "--inception"),
    "i3d": PublishedWeights(
        "FVD network (StyleGAN-V I3D TorchScript)", "i3d_torchscript.pt",
        "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1", "--i3d"),
}


def weights_file(name: str, path: PathLike | None = None,
                 extra_locations: list[Path] | tuple[Path, ...] = ()) -> Path:
    """The weights file of published network ``name`` (a key of :data:`PUBLISHED`): ``path``
    when given (it must exist), else the first default location that exists.

    Raises :class:`MissingWeightsError` (one line: the file, where it is published, the option
    that names it).
    """
    published = PUBLISHED[name]
    if path is not None:
        path = Path(path)
        if path.is_file():
            return path
        raise MissingWeightsError(
            f"{published.what}: weights file {path} not found; it is published at "
            f"{published.url}")
    for candidate in [*extra_locations, *published.default_locations()]:
        if candidate.is_file():
            return candidate
    raise MissingWeightsError(
        f"{published.what}: weights file {published.filename} not found (pass "
        f"{published.option} PATH); it is published at {published.url}")
