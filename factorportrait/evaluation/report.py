"""Score a results folder (:mod:`.results`) with the field's metrics -> per-video and
aggregate tables in the papers' layout (``tools/evaluate.py``; docs/evaluation.md).

Per case (one generated video), by protocol (DeX-Portrait Table 1, FactorPortrait Tables 2–3):

    self          PSNR, SSIM, LPIPS against the ground truth; CSIM against the reference;
                  AED and APD against the ground truth
    cross         CSIM against the reference; AED and APD against the driving video
    disentangled  CSIM against the reference; APD against the pose driver, AED against the
                  expression driver

and per protocol over all its cases FID (frames) and FVD (clips) of the generated videos
against their ground truth or driving videos. Metrics whose network file cannot be found are
skipped with the one-line reason when they were not asked for by name, and refused with it
when they were. A face the tracker cannot find leaves that case's face metrics empty, with
the reason in its row.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from factorportrait.evaluation.networks import MissingWeightsError
from factorportrait.evaluation.results import PROTOCOLS, Case, find_cases

METRICS = ("psnr", "ssim", "lpips", "csim", "aed", "apd", "fid", "fvd")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "csim": True, "aed": False,
                    "apd": False, "fid": False, "fvd": False}
SET_METRICS = ("fid", "fvd")
FACE_METRICS = ("csim", "aed", "apd")
# The papers' column order per protocol (DeX-Portrait Table 1), then the set metrics.
LAYOUT = {"self": ("psnr", "ssim", "lpips", "csim", "aed", "apd", "fid", "fvd"),
          "cross": ("csim", "aed", "apd", "fid", "fvd"),
          "disentangled": ("csim", "aed", "apd", "fid", "fvd")}
TITLES = {"self": "Self-reenactment", "cross": "Cross-reenactment",
          "disentangled": "Disentangled reenactment"}


@dataclass
class MetricNetworks:
    """The loaded networks (``None``: that metric is not computed) and why each skipped metric
    is skipped."""

    lpips: object = None
    arcface: object = None
    inception: object = None
    i3d: object = None
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightPaths:
    """Files named by the user (``None``: the default locations of
    :mod:`~factorportrait.evaluation.networks`)."""

    lpips_backbone: str | None = None
    lpips_heads: str | None = None
    lpips_net: str = "alex"
    arcface: str | None = None
    inception: str | None = None
    i3d: str | None = None


def parse_metrics(text: str | None) -> tuple[list[str], bool]:
    """``"psnr,lpips"`` -> (metrics, explicit); ``None`` or ``"all"`` -> every metric, not
    explicit (those without weights are skipped). ``ValueError`` naming an unknown one."""
    if text is None or text == "all":
        return list(METRICS), False
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics: unknown metric(s) {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(METRICS)}")
    return names, True


def load_networks(metrics: Iterable[str], paths: WeightPaths, explicit: bool
                  ) -> MetricNetworks:
    """Load the networks ``metrics`` need; a missing file raises ``MissingWeightsError`` when
    ``explicit``, else the metric is skipped with the reason."""
    from factorportrait.evaluation import frechet, identity, perceptual

    loaders = {
        "lpips": ("lpips", lambda: perceptual.load_lpips(paths.lpips_net, paths.lpips_backbone,
                                                         paths.lpips_heads)),
        "csim": ("arcface", lambda: identity.load_arcface(paths.arcface)),
        "fid": ("inception", lambda: frechet.load_inception(paths.inception)),
        "fvd": ("i3d", lambda: frechet.load_i3d(paths.i3d)),
    }
    networks = MetricNetworks()
    for metric in metrics:
        if metric not in loaders:
            continue
        slot, load = loaders[metric]
        try:
            setattr(networks, slot, load())
        except MissingWeightsError as error:
            if explicit:
                raise
            networks.skipped[metric] = str(error)
        except RuntimeError as error:  # torch.jit.load of a file that is not TorchScript
            first = str(error).strip().splitlines()[0] if str(error).strip() else \
                type(error).__name__
            named = {"lpips": paths.lpips_backbone or paths.lpips_heads, "csim": paths.arcface,
                     "fid": paths.inception, "fvd": paths.i3d}[metric]
            raise ValueError(f"{metric.upper()}: weights file {named or '(default location)'} "
                             f"could not be loaded ({first[:160]})") from error
    return networks


def _read(path: Path, name: str, frames: int | None = None, size: tuple | None = None
          ) -> Tensor:
    from factorportrait.io.video import read_video

    video = read_video(path)
    if frames is not None and len(video) != frames:
        raise ValueError(f"{path}: {len(video)} frames, but generated.mp4 has {frames} "
                         f"({name} is compared frame by frame)")
    if size is not None and tuple(video.shape[1:3]) != size:
        raise ValueError(f"{path}: frames of {video.shape[2]}x{video.shape[1]}, but "
                         f"generated.mp4's are {size[1]}x{size[0]}")
    return video


class _SetFeatures:
    """Per protocol, the real and generated feature accumulators of FID and FVD."""

    def __init__(self) -> None:
        from factorportrait.evaluation.frechet import FeatureAccumulator

        self.accumulators = {(protocol, metric, side): FeatureAccumulator()
                             for protocol in PROTOCOLS for metric in SET_METRICS
                             for side in ("real", "fake")}
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, protocol: str, networks: MetricNetworks, real: Tensor, fake: Tensor) -> None:
        """FID: every frame, :data:`FID_BATCH` at a time; FVD: the video's consecutive
        :data:`FVD_FRAMES`-frame clips (one clip of the whole video when it is shorter)."""
        for metric, network, batches in (("fid", networks.inception, _frame_batches),
                                         ("fvd", networks.i3d, _clips)):
            if network is None:
                continue
            with torch.no_grad():
                for side, video in (("real", real), ("fake", fake)):
                    for batch in batches(video):
                        self.accumulators[protocol, metric, side].update(network(batch))
            self.counts[protocol, metric] = self.counts.get((protocol, metric), 0) + 1

    def scores(self, skipped: dict[str, str]) -> dict[str, dict[str, float]]:
        """Per protocol ``{fid, fvd, fid_samples, fvd_samples}``; a set too small for a
        covariance goes to ``skipped`` with the reason."""
        from factorportrait.evaluation.frechet import frechet_distance

        result: dict[str, dict[str, float]] = {}
        for (protocol, metric), count in self.counts.items():
            real = self.accumulators[protocol, metric, "real"].statistics() \
                if self.accumulators[protocol, metric, "real"].count >= 2 else None
            fake = self.accumulators[protocol, metric, "fake"].statistics() \
                if self.accumulators[protocol, metric, "fake"].count >= 2 else None
            if real is None or fake is None:
                unit = "clips" if metric == "fvd" else "frames"
                skipped[f"{metric} ({protocol})"] = (
                    f"needs at least 2 {unit} on each side; {protocol} has fewer")
                continue
            scores = result.setdefault(protocol, {})
            scores[metric] = frechet_distance(real.mean, real.covariance, fake.mean,
                                              fake.covariance)
            scores[f"{metric}_samples"] = fake.count
        return result


FID_BATCH = 64  # frames per Inception call
FVD_FRAMES = 16  # frames per FVD clip (StyleGAN-V's fvd2048_16f)


def _frame_batches(video: Tensor) -> Iterable[Tensor]:
    return (video[start:start + FID_BATCH] for start in range(0, len(video), FID_BATCH))


def _clips(video: Tensor) -> Iterable[Tensor]:
    """Consecutive non-overlapping ``FVD_FRAMES``-frame clips ``(1, T, H, W, 3)``; a video
    shorter than that is one clip."""
    if len(video) < FVD_FRAMES:
        return [video[None]]
    return (video[start:start + FVD_FRAMES][None]
            for start in range(0, len(video) - FVD_FRAMES + 1, FVD_FRAMES))


def _image_metrics(generated: Tensor, truth: Tensor, networks: MetricNetworks,
                   metrics: list[str]) -> dict[str, float]:
    from factorportrait.evaluation.metrics import psnr, ssim
    from factorportrait.evaluation.perceptual import lpips

    a = generated.permute(0, 3, 1, 2).float()
    b = truth.permute(0, 3, 1, 2).float()
    row = {}
    if "psnr" in metrics:
        row["psnr"] = float(psnr(a, b, 255.0).clamp_max(100.0).mean())
    if "ssim" in metrics:
        row["ssim"] = float(ssim(a, b, 255.0).mean())
    if networks.lpips is not None:
        with torch.no_grad():
            row["lpips"] = float(lpips(a / 127.5 - 1, b / 127.5 - 1, networks.lpips).mean())
    return row


def _face_metrics(case: Case, generated: Tensor, targets: dict[str, Tensor],
                  reference: Tensor | None, networks: MetricNetworks, tracker,
                  metrics: list[str]) -> dict[str, float]:
    """CSIM, APD, AED of one case; ``targets``: the read pose / expression target videos
    (tracked poses and expressions do not depend on their size). Tracking errors (no face, a
    face too small) propagate as ``ValueError``."""
    from factorportrait.evaluation.identity import csim
    from factorportrait.evaluation.motion import aed, apd, track_frames

    row: dict[str, float] = {}
    generated_track = track_frames(generated, tracker, name=f"{case.name}/generated.mp4")
    if networks.arcface is not None and "csim" in metrics and reference is not None:
        row["csim"] = float(csim(generated, reference, networks.arcface, tracker,
                                 generated_landmarks=generated_track.landmarks).mean())
    tracks = {}
    for metric, path in (("apd", case.pose_target), ("aed", case.expression_target)):
        if metric not in targets:
            continue
        if path not in tracks:
            tracks[path] = track_frames(targets[metric], tracker,
                                        name=f"{case.name}/{path.name}")
        if metric == "apd":
            row["apd"] = apd(generated_track, tracks[path]).value
        else:
            source = reference if case.protocol != "self" and reference is not None else None
            row["aed"] = aed(generated_track, tracks[path], tracker,
                             generated_reference=source).value
    return row


def score_case(case: Case, networks: MetricNetworks, metrics: list[str], tracker,
               sets: _SetFeatures | None = None) -> dict:
    """One row: the case's metrics (module docstring). Files are read (and refused) first;
    a face the tracker cannot use leaves the face metrics out with ``face_error``."""
    from factorportrait.io.video import read_image

    generated = _read(case.generated, "generated.mp4")
    count, shape = len(generated), tuple(generated.shape[1:3])
    row: dict = {"case": case.name, "protocol": case.protocol, "frames": count}
    truth = None
    if case.ground_truth is not None:
        truth = _read(case.ground_truth, "ground_truth.mp4", count, shape)
    wanted = {"apd": case.pose_target, "aed": case.expression_target}
    targets = {metric: truth if path == case.ground_truth else _read(path, path.name, count)
               for metric, path in wanted.items() if metric in metrics and path is not None}
    reference = read_image(case.reference) if case.reference is not None else None
    if truth is not None:
        try:
            row.update(_image_metrics(generated, truth, networks, metrics))
        except (ValueError, RuntimeError) as error:  # e.g. frames too small for SSIM/LPIPS
            raise ValueError(f"{case.name}: {str(error).splitlines()[0]}") from error
    if any(m in metrics for m in FACE_METRICS):
        try:
            row.update(_face_metrics(case, generated, targets, reference, networks, tracker,
                                     metrics))
        except ValueError as error:  # no face, a face too small: the tracker's one line
            row["face_error"] = str(error)
    real = truth if truth is not None else targets.get("aed")
    if real is None and sets is not None and case.expression_target is not None:
        real = _read(case.expression_target, case.expression_target.name, count)
    if sets is not None and real is not None:
        sets.add(case.protocol, networks, real, generated)
    return row


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def evaluate_results(root: str | os.PathLike, metrics: list[str], networks: MetricNetworks,
                     progress: bool = True) -> dict:
    """Score every case under ``root``: ``{"cases": [row], "protocols": {protocol: {metric:
    mean, "cases": n}}, "skipped": {metric: reason}}``."""
    from factorportrait.evaluation.motion import metric_tracker

    cases = find_cases(root)
    sets = _SetFeatures() if networks.inception is not None or networks.i3d is not None \
        else None
    tracker = metric_tracker() if any(m in metrics for m in FACE_METRICS) else None
    try:
        rows = [score_case(case, networks, metrics, tracker, sets)
                for case in tqdm(cases, desc="evaluating", unit="video", disable=not progress,
                                 dynamic_ncols=True)]
    finally:
        if tracker is not None:
            tracker.close()
    protocols = {}
    for protocol in PROTOCOLS:
        mine = [row for row in rows if row["protocol"] == protocol]
        if mine:
            protocols[protocol] = {"cases": len(mine), **{
                metric: _mean([row.get(metric) for row in mine]) for metric in LAYOUT[protocol]
                if metric not in SET_METRICS and any(metric in row for row in mine)}}
    skipped = dict(networks.skipped)
    for protocol, scores in (sets.scores(skipped) if sets is not None else {}).items():
        protocols[protocol].update(scores)
    faceless = sum("face_error" in row for row in rows)
    return finite_or_none({"root": str(root), "metrics": metrics, "cases": rows,
                           "protocols": protocols, "skipped": skipped,
                           "cases_without_face": faceless})


def finite_or_none(value):
    """``value`` with every non-finite float replaced by ``None`` (valid JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_or_none(item) for item in value]
    return value


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def format_markdown(report: dict) -> str:
    """Aggregate tables per protocol in the papers' layout, then one row per video."""
    lines = [f"# Evaluation of {report['root']}", ""]
    for protocol, scores in report["protocols"].items():
        columns = [m for m in LAYOUT[protocol] if scores.get(m) is not None]
        lines += [f"## {TITLES[protocol]} ({scores['cases']} videos)", "",
                  "| " + " | ".join(f"{m.upper()}{'↑' if HIGHER_IS_BETTER[m] else '↓'}"
                                   for m in columns) + " |",
                  "|" + "---|" * len(columns),
                  "| " + " | ".join(_cell(scores[m]) for m in columns) + " |", ""]
    per_case = [m for m in METRICS if m not in SET_METRICS
                and any(m in row for row in report["cases"])]
    lines += ["## Per video", "", "| video | protocol | frames | " + " | ".join(
        m.upper() for m in per_case) + " | note |", "|" + "---|" * (len(per_case) + 4)]
    for row in report["cases"]:
        lines.append(f"| {row['case']} | {row['protocol']} | {row['frames']} | " + " | ".join(
            _cell(row.get(m)) for m in per_case) + f" | {row.get('face_error', '')} |")
    if report["skipped"]:
        lines += ["", "Skipped metrics:", *[f"- {m}: {why}" for m, why in
                                            report["skipped"].items()]]
    return "\n".join(lines) + "\n"


def plot_report(report: dict, path: str | os.PathLike) -> None:
    """One bar chart per per-video metric (bars = videos, coloured by protocol)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from factorportrait.io.atomic import atomic_output

    rows = report["cases"]
    metrics = [m for m in METRICS if m not in SET_METRICS and any(m in r for r in rows)]
    if not metrics:
        return
    colours = {"self": "tab:blue", "cross": "tab:orange", "disentangled": "tab:green"}
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2),
                                squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        values = [row.get(metric) if row.get(metric) is not None else float("nan")
                  for row in rows]
        axis.bar(range(len(rows)), values, color=[colours[r["protocol"]] for r in rows])
        axis.set_title(f"{metric.upper()} {'↑' if HIGHER_IS_BETTER[metric] else '↓'}")
        axis.set_xticks(range(len(rows)), [r["case"][:12] for r in rows], rotation=90,
                        fontsize=6)
    figure.tight_layout()
    with atomic_output(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
