"""The papers' ablations at demo scale: one command per row (docs/demo.md, "Ablations").

``python tools/demo.py ablate NAME`` loads ``recipes/demo.yaml`` with the overlay
``recipes/ablations/NAME.yaml`` (it sets the recipe's ``ablation`` section), trains the DiT
through the demo's four stages with the ablation's training overrides — on the demo's data,
expression codes and latent cache (built first when missing) with the shipped VAE and
encoder; an overlay that changes ``data`` builds its own dataset, codes and cache in
``<output_dir>/ablations/NAME/work``, leaving the demo's untouched — then scores it with
the demo's metric table (:mod:`factorportrait.demo.evaluate`),
feeding the conditions the ablation removed as their nulls, as in its training. ``full`` is
the shipped model itself (no training). Each row goes to
``<output_dir>/ablations/NAME/metrics.json``; ``python tools/demo.py ablations`` prints the
table of the rows present beside the paper's.

Rows (FactorPortrait Table 2; DeX-Portrait Table 2):

    full                  the shipped demo model
    c1_no_dynamicsweep    C1: no DynamicSweep clips; stages 3-4 mix Phone 20 / Studio 40 /
                          ViewSweep 40 (%)
    c2_no_normal_maps     C2: no body normal maps (the pose condition always dropped)
    no_camera_rays        no Plücker camera rays (the camera condition always dropped)
    c3_landmarks          C3: 478 2D landmarks through cross attention instead of the codes
    dex_dual_branch       DeX's dual-branch pose injection (head-pose ray maps + reference
                          warping) added; AdaLN expression, normals and rays kept
    dex_no_ray_map        DeX "w/o ray map": dex_dual_branch with warping only
    dex_no_warping        DeX "w/o warping": dex_dual_branch with ray maps only
    neutral_normals       the pose normal maps rendered with a neutral face, so the expression
                          reaches the DiT only through the codes (its own dataset)
(docs/conditioning.md for the DeX and C3 variants.)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from factorportrait.demo.config import (
    RECIPE,
    REPO,
    STAGES,
    checkpoint_dir,
    load_demo_config,
    work_dir,
)
from factorportrait.io.atomic import atomic_write_bytes

LOG = logging.getLogger(__name__)
ABLATIONS = REPO / "recipes" / "ablations"
# The paper's Table 2 rows beside ours (FactorPortrait, DynamicSweep; SSIM and CSIM in %).
PAPER = {
    "full": "Full: PSNR 22.81, SSIM 83.32, CSIM 78.82, AED 0.212, FID-VID 20.68",
    "c1_no_dynamicsweep": "C1: PSNR 21.63, SSIM 80.37, CSIM 78.20, AED 0.221, FID-VID 40.44",
    "c2_no_normal_maps": "C2: PSNR 16.62, SSIM 70.32, CSIM 65.16, AED 0.202, FID-VID 50.22",
    "no_camera_rays": "(no paper row: FactorPortrait keeps its Plücker rays in every row)",
    "c3_landmarks": "C3: PSNR 19.60, SSIM 77.48, CSIM 70.01, AED 0.290, FID-VID 53.78",
    "dex_dual_branch": "DeX full (cross): CSIM 0.623, AED 0.0515, APD 0.145",
    "dex_no_ray_map": "DeX w/o ray map (cross): CSIM 0.609, AED 0.0506, APD 0.162",
    "dex_no_warping": "DeX w/o warping (cross): CSIM 0.619, AED 0.0507, APD 0.166",
    "neutral_normals": "(no paper row: the paper's normal maps come from body meshes)",
}


# The row each ablation is checked against (default: full) and the rows that add to full.
COMPARED_WITH = {"dex_no_ray_map": "dex_dual_branch", "dex_no_warping": "dex_dual_branch"}
ADDITIONS = ("dex_dual_branch",)
VARIANTS = ("neutral_normals",)  # another form of a condition: the paper orders nothing


def ablation_names() -> list[str]:
    return sorted(p.stem for p in ABLATIONS.glob("*.yaml"))


ALLOWED_OVERRIDES = ("render.", "threads=")  # the shared data, codes and latents stay as made


def ablation_config(name: str, overrides: list[str] = (), recipe: str | Path | None = None
                    ) -> DictConfig:
    """The demo recipe (``recipe``, default recipes/demo.yaml) with ablation ``name``'s
    overlay and ``key=value`` overrides of ``render.*`` or ``threads`` (the dataset, codes and
    latent cache are shared with the demo, so their keys cannot change here)."""
    path = ABLATIONS / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown ablation {name!r}; ablations: {', '.join(ablation_names())}")
    refused = [o for o in overrides if not o.startswith(ALLOWED_OVERRIDES)]
    if refused:
        raise ValueError(f"ablate {name}: override(s) {', '.join(refused)} not allowed; only "
                         "render.* and threads (the ablation's own changes are in "
                         f"{path.relative_to(REPO)})")
    config = load_demo_config(recipe or RECIPE, overrides)
    try:
        merged = OmegaConf.merge(config, OmegaConf.load(path))
    except Exception as error:  # struct mode: an overlay key the recipe lacks
        raise ValueError(f"ablation recipe {path}: {error}") from error
    if merged.data != config.data and merged.ablation.work_dir is None:
        merged.ablation.work_dir = str(Path(config.output_dir) / "ablations" / name / "work")
    return merged


def shared_config(config: DictConfig) -> DictConfig:
    """``config`` as the demo's training steps see it: an ablation with its own ``data``
    keeps its dataset, codes, latent cache and runs in ``ablation.work_dir``."""
    if config.ablation.work_dir is None:
        return config
    shared = config.copy()
    shared.output_dir = config.ablation.work_dir  # relative to the repository, as output_dir
    return shared


def ablation_dir(config: DictConfig, name: str) -> Path:
    """``<output_dir>/ablations/NAME``: the row's checkpoint and ``metrics.json``."""
    folder = work_dir(config) / "ablations" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def prepare_shared(config: DictConfig) -> None:
    """The demo's dataset, codes and latent cache (skipped when they exist and are current),
    made with the shipped VAE and encoder: an ablation never retrains those."""
    from factorportrait.demo import train

    for name, step in (("data", train.step_data), ("codes", train.step_codes),
                       ("latents", train.step_latents)):
        if train.step_done(config, name):
            continue
        LOG.info("ablation: demo step %s ...", name)
        start = time.perf_counter()
        step(config)
        train._record_time(config, name, time.perf_counter() - start)
        if name != "data":
            train._store(config, name)


def train_ablation(config: DictConfig, name: str) -> Path:
    """Train the ablated DiT (resumable: finished stages are skipped, an interrupted one
    resumes); returns its checkpoint folder (DiT + the shipped VAE and encoder files)."""
    from factorportrait.demo import train
    from factorportrait.training import run_curriculum
    from factorportrait.training import train as train_stage
    from factorportrait.training.curriculum import final_dir

    shared = shared_config(config)
    folder = ablation_dir(config, name) / "checkpoint"
    ablation = OmegaConf.to_container(config.ablation)
    ablation.pop("work_dir")  # where it trains, not what: moving the folders keeps the runs
    inputs = {"dit": OmegaConf.to_container(config.dit), "ablation": ablation,
              "latents": train._stored(shared, "latents")}
    marker = ablation_dir(config, name) / "inputs.json"
    runs = work_dir(shared) / "runs" / f"ablation_{config.ablation.name}"  # stage_config's
    stale = not marker.is_file() or json.loads(marker.read_text()) != inputs
    if stale and runs.is_dir():
        shutil.rmtree(runs)  # trained from other (or unrecorded) inputs: start over
    atomic_write_bytes(marker, json.dumps(inputs, indent=1).encode())
    run_curriculum(list(STAGES), lambda stage: train.stage_config(shared, stage), train_stage)
    last = train.stage_config(shared, STAGES[-1])
    train._copy(final_dir(last.stage_dir), folder, train.DIT_FILES)
    train._copy(checkpoint_dir(config), folder, train.VAE_FILES + train.ENCODER_FILES)
    return folder


def evaluate_ablation(config: DictConfig, name: str, checkpoints: Path, clips: int | None,
                      frames: int | None, steps: int | None) -> dict:
    """The demo's metric table of the model in ``checkpoints``, its dropped conditions fed as
    nulls; written to ``<ablation dir>/metrics.json``."""
    from factorportrait.demo.evaluate import metric_table, write_json
    from factorportrait.demo.showcase import evaluation_clips, load_components, sample_settings

    pipeline, encoder = load_components(checkpoints)
    settings = replace(sample_settings(config, steps), drop=tuple(config.ablation.drop))
    evaluated = evaluation_clips(config, encoder, clips or config.render.evaluate_clips,
                                 frames or config.render.frames)
    table, _ = metric_table(pipeline, evaluated, settings, encoder.encoder)
    table.update(ablation=name, drop=list(config.ablation.drop),
                 overrides=OmegaConf.to_container(config.ablation), paper=PAPER.get(name))
    write_json(ablation_dir(config, name) / "metrics.json", table)
    return table


def run_ablation(name: str, overrides: list[str], clips: int | None = None,
                 frames: int | None = None, steps: int | None = None,
                 recipe: str | Path | None = None) -> dict:
    """``tools/demo.py ablate NAME``: train (unless ``full``) and evaluate one row."""
    config = ablation_config(name, overrides, recipe)
    for file in ("vae.safetensors", "expression_encoder.safetensors"):
        if not (checkpoint_dir(config) / file).is_file():
            raise ValueError(f"ablate {name}: {checkpoint_dir(config) / file} is missing; the "
                             "ablations use the demo's VAE and encoder (python tools/demo.py "
                             "train --until encoder)")
    torch.set_num_threads(config.threads)  # a command: it owns the process
    if config.ablation.name is None:
        checkpoints = checkpoint_dir(config)
    else:
        prepare_shared(shared_config(config))
        checkpoints = train_ablation(config, name)
    return evaluate_ablation(config, name, checkpoints, clips, frames, steps)


def ablation_table(config: DictConfig) -> str:
    """Markdown: one row per ablation with a ``metrics.json`` (model row of its table)."""
    from factorportrait.demo.evaluate import COLUMNS, HIGHER_IS_BETTER, ROWS

    lines, rows = [], {}
    for name in sorted(ablation_names(), key=lambda n: (n != "full", n)):  # full first
        path = work_dir(config) / "ablations" / name / "metrics.json"
        if path.is_file():
            rows[name] = json.loads(path.read_text())
    if not rows:
        return "no ablation has been run yet: python tools/demo.py ablate NAME"
    header = " | ".join(title for _, title, _ in COLUMNS)
    lines += [f"| row | {header} | paper (same row) |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, table in rows.items():
        model = table["mean"][ROWS[0]]
        cells = " | ".join(fmt.format(model[key]).strip() if key in model else "–"
                           for key, _, fmt in COLUMNS)
        lines.append(f"| {name} | {cells} | {PAPER.get(name) or table.get('paper') or ''} |")
    lines.append("")
    for name, table in rows.items():
        base = COMPARED_WITH.get(name, "full")
        if name == "full" or base not in rows:
            continue
        reference, mine = rows[base]["mean"][ROWS[0]], table["mean"][ROWS[0]]
        checks = []
        for key in ("psnr", "pose_iou"):
            better = (reference[key] > mine[key]) == HIGHER_IS_BETTER[key]
            checks.append(f"{key} {reference[key]:.4g} vs {mine[key]:.4g} "
                          f"({base if better else name} better)")
        expected = ("an addition to full, not an ablation" if name in ADDITIONS else
                    "a variant of a condition, no paper ordering" if name in VARIANTS else
                    f"the paper: {base} better")
        lines.append(f"- {base} against {name}: " + "; ".join(checks) + f" ({expected})")
    return "\n".join(lines)
