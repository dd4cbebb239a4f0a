"""``make demo-train``: the demo model from nothing, on a CPU (recipe ``recipes/demo.yaml``).

Steps, each skipped when its output already exists (so an interrupted run continues):

    1. data      synthetic portraits: training and held-out identities (tools/make_synthetic.py)
    2. vae       a reduced-width Wan VAE trained on them (factorportrait.training.vae)
    3. encoder   the expression encoder (recipes/expression_encoder.yaml + the demo's overrides)
    4. codes     the encoder's codes of every frame, written into the clips' annotations
    5. latents   the latent cache of every stage's windows (tools/precompute.py)
    6. dit       FactorPortraitDiT through the four curriculum stages, scaled down
    7. ship      DiT + VAE + encoder into ``checkpoints`` with demo.json (timings, command)

The seconds of each step go to ``<output_dir>/timings.json`` and then into demo.json.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from factorportrait.demo.config import DEMO_RECORD, REPO, STAGES, checkpoint_dir, work_dir
from factorportrait.io.atomic import atomic_write_bytes

LOG = logging.getLogger(__name__)
STEPS = ("data", "vae", "encoder", "codes", "latents", "dit", "ship")
ENCODER_FILES = ("expression_encoder.json", "expression_encoder.safetensors")
VAE_FILES = ("vae_config.json", "vae.safetensors")
DIT_FILES = ("config.json", "model.safetensors")


def synthetic_config(config: DictConfig):
    """The demo dataset's ``SyntheticConfig`` (also used to re-render held-out clips)."""
    from factorportrait.data.synthetic import SyntheticConfig

    data = config.data
    return SyntheticConfig(identities=data.identities, heldout=data.heldout,
                           clips_per_kind=data.clips_per_kind, frames=data.frames,
                           width=data.size, height=data.size, seed=data.seed,
                           normals_expression=data.get("normals_expression", True))


def data_root(config: DictConfig) -> Path:
    return work_dir(config) / "data"


# ---------------------------------------------------------------------------- steps

def step_data(config: DictConfig) -> None:
    from factorportrait.data.synthetic import generate_dataset

    report = generate_dataset(data_root(config), synthetic_config(config), progress=True,
                              workers=config.data.workers)
    LOG.info("%s", report.summary())


def vae_phases(config: DictConfig) -> list:
    """The VAE's ``VAETrainConfig`` phases: the ``vae`` section, then (unless null) the same
    with ``vae.continue_with``'s keys, trained from the first phase's weights."""
    from factorportrait.training.vae import VAETrainConfig

    settings = OmegaConf.to_container(config.vae)
    settings.pop("device", None)  # the recipe's top-level device decides
    then = settings.pop("continue_with", None)
    first = VAETrainConfig(root=str(data_root(config)), output_dir=str(work_dir(config) / "vae"),
                           size=config.size, device=config.get("device", "cpu"), **settings)
    if not then:
        return [first]
    return [first, replace(first, **{**settings, **then},
                           output_dir=str(work_dir(config) / "vae" / "continued"),
                           init_from=first.output_dir)]


def step_vae(config: DictConfig) -> float:
    """Train the VAE phases (:func:`vae_phases`); returns their seconds, kept phases included."""
    from factorportrait.training.vae import train_phases

    phases = vae_phases(config)
    seconds = train_phases(phases)
    _copy(Path(phases[-1].output_dir), checkpoint_dir(config), VAE_FILES)
    return seconds


def expression_training_config(config: DictConfig):
    """The expression encoder's ``TrainConfig``: ``recipes/expression_encoder.yaml`` with the
    demo's overrides, written to ``<output_dir>/expression_encoder``."""
    from factorportrait.expression.train import config_from_recipe

    folder = work_dir(config) / "expression_encoder"
    return config_from_recipe(REPO / "recipes" / "expression_encoder.yaml",
                              [*config.expression_encoder, f"output_dir={folder}"])


def step_encoder(config: DictConfig) -> None:
    from factorportrait.expression.train import train_expression_encoder

    settings = expression_training_config(config)
    folder = Path(settings.output_dir)
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        train_expression_encoder(settings, log=LOG.info)
    finally:
        torch.set_num_threads(threads)
    _copy(folder, checkpoint_dir(config), ENCODER_FILES)


def clip_codes(encoder, root: Path, record) -> torch.Tensor:
    """The encoder's codes ``(F, 128)`` of every frame of a dataset clip, each frame's face
    cropped at its annotated head pose seen through its camera."""
    from factorportrait.data.annotations import load_annotations
    from factorportrait.expression.codes import EncoderCodeSource
    from factorportrait.expression.dataset_eval import annotation_face_boxes
    from factorportrait.io import read_video

    annotations = load_annotations(record.resolve(root, "annotations"))
    frames = read_video(record.resolve(root, "video")).permute(0, 3, 1, 2).float() / 127.5 - 1
    boxes = annotation_face_boxes(annotations, range(len(frames)))
    with torch.no_grad():
        return EncoderCodeSource(encoder)(frames, boxes)


def step_codes(config: DictConfig) -> None:
    from factorportrait.data.annotations import load_annotations, save_annotations
    from factorportrait.data.format import read_manifest
    from factorportrait.models.expression_encoder import ExpressionEncoder

    root = data_root(config)
    encoder = ExpressionEncoder.from_pretrained(checkpoint_dir(config))
    for record in read_manifest(root):
        codes = clip_codes(encoder, root, record)
        path = record.resolve(root, "annotations")
        save_annotations(path, replace(load_annotations(path), expression_codes=codes))


def step_latents(config: DictConfig) -> None:
    from factorportrait.data import PortraitClipDataset, precompute_latents
    from factorportrait.models.vae import WanVAE

    from factorportrait.training.distributed import training_device

    vae = WanVAE.load(checkpoint_dir(config)).to(training_device(config.get("device", "cpu"),
                                                                 "device"))
    for frames in sorted({stage.frames for stage in config.dit.stages.values()}):
        clips = PortraitClipDataset(data_root(config), frames, size=(config.size, config.size),
                                    split=None, window_step=config.dit.window_step,
                                    reference_count=config.dit.reference_count)
        report = precompute_latents(clips, vae, progress=True)
        if report.failed:
            raise RuntimeError(f"latent cache: clips failed: {report.failed}")
        LOG.info("latents, %d frames: %s", frames, report.summary())


def stage_config(config: DictConfig, name: str):
    """The Hydra training recipe of curriculum stage ``name`` at the demo's scale."""
    from hydra import compose, initialize_config_dir

    from factorportrait.training import TrainConfig

    stage, dit, ablation = config.dit.stages[name], config.dit, config.ablation
    with initialize_config_dir(config_dir=str(REPO / "recipes"), version_base="1.3"):
        recipe = compose("config", overrides=[
            f"stage={name}", "model=tiny", "data=synthetic", *ablation.train_overrides,
            *ablation.stage_overrides[name]])
    with open_dict(recipe):
        recipe.experiment = "dit" if ablation.name is None else f"ablation_{ablation.name}"
        recipe.output_root = str(work_dir(config) / "runs")
        # the demo's sizes, then what the recipe adds (an ablation's conditioning=...)
        recipe.model.overrides = {**OmegaConf.to_container(dit.model),
                                  **OmegaConf.to_container(recipe.model.overrides)}
        recipe.data.height = recipe.data.width = config.size
        recipe.data.num_workers = 0
        recipe.data.options.update(root=str(data_root(config)),
                                   vae=str(checkpoint_dir(config)), latents=True,
                                   window_step=dit.window_step,
                                   reference_count=dit.reference_count)
        recipe.stage.frames, recipe.stage.steps = stage.frames, stage.steps
        recipe.train.global_batch_size = recipe.train.micro_batch_size = dit.global_batch_size
        recipe.optim.lr_scale, recipe.optim.warmup_steps = dit.lr_scale, dit.warmup_steps
        recipe.optim.weight_decay = 0.0
        recipe.checkpoint.every, recipe.checkpoint.keep_last = 200, 1
        recipe.validation.every = stage.steps
        recipe.validation.batches = dit.validation_batches
        recipe.logging.every, recipe.logging.tensorboard = 50, False
        recipe.logging.progress_bar = False
        recipe.pop("hydra", None)
    return TrainConfig.from_dict(OmegaConf.to_container(recipe, resolve=True))


def step_dit(config: DictConfig) -> None:
    from factorportrait.training import run_curriculum, train
    from factorportrait.training.curriculum import final_dir

    runs = work_dir(config) / "runs" / "dit"
    if _marker(config, "dit").is_file() and runs.is_dir():
        shutil.rmtree(runs)  # stale stages of other inputs: the curriculum would skip them
        _marker(config, "dit").unlink()  # an interrupted retraining then resumes
    run_curriculum(list(STAGES), lambda name: stage_config(config, name), train)
    last = stage_config(config, STAGES[-1])
    _copy(final_dir(last.stage_dir), checkpoint_dir(config), DIT_FILES)


def step_ship(config: DictConfig, command: str) -> None:
    """Write demo.json: the command, the recipe, each step's seconds and the file sizes."""
    folder = checkpoint_dir(config)
    timings = _timings(config)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())
             if p.suffix == ".safetensors"}
    history = work_dir(config) / "commands.json"
    invocations = json.loads(history.read_text()) if history.is_file() else [command]
    record = {"command": command, "invocations": invocations,
              "recipe": OmegaConf.to_container(config),
              "seconds": timings, "weights_bytes": files,
              "weights_total_mb": round(sum(files.values()) / 2**20, 2),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    atomic_write_bytes(folder / DEMO_RECORD, json.dumps(record, indent=2).encode())


# ---------------------------------------------------------------------------- driver

def step_inputs(config: DictConfig, name: str) -> dict:
    """What step ``name``'s output depends on: its recipe section and the fingerprints of the
    steps before it. A step whose stored inputs differ is stale and runs again, so changing
    the VAE recipe retrains the VAE, then re-caches the latents, then retrains the DiT."""
    recipe = OmegaConf.to_container(config)
    if recipe["data"].get("normals_expression", True) is True:
        recipe["data"].pop("normals_expression", None)  # as before the key existed
    if name == "vae":
        return {"vae": recipe["vae"], "size": config.size, "data": recipe["data"]}
    if name == "encoder":  # the resolved training config: the base recipe counts too
        settings = expression_training_config(config).to_dict()
        settings.pop("output_dir")
        return {"expression_encoder": settings}
    if name == "codes":
        return {"encoder": _sha256(checkpoint_dir(config) / ENCODER_FILES[1]),
                "data": recipe["data"]}
    if name == "latents":
        return {"vae": _sha256(checkpoint_dir(config) / VAE_FILES[1]),
                "codes": _stored(config, "codes"), "size": config.size,
                "frames": sorted({stage.frames for stage in config.dit.stages.values()}),
                "window_step": config.dit.window_step,
                "reference_count": config.dit.reference_count}
    if name == "dit":
        return {"dit": recipe["dit"], "latents": _stored(config, "latents")}
    raise ValueError(f"step {name!r} has no stored inputs")


OUTPUTS = {"vae": VAE_FILES, "encoder": ENCODER_FILES, "dit": DIT_FILES}


def step_done(config: DictConfig, name: str) -> bool:
    """Whether step ``name``'s output exists and was made from the current inputs."""
    if name == "data":
        return (data_root(config) / "synthetic.json").is_file() and _data_complete(config)
    if name == "ship":
        return False
    if not all((checkpoint_dir(config) / f).is_file() for f in OUTPUTS.get(name, ())):
        return False
    try:
        return _stored(config, name) == json.loads(json.dumps(step_inputs(config, name)))
    except FileNotFoundError:
        return False


def train_demo(config: DictConfig, command: str, until: str | None = None,
               force: Sequence[str] = ()) -> dict[str, float]:
    """Run the steps (module docstring) up to ``until``; ``force`` re-runs named steps.
    Returns the seconds of every step run so far (this and earlier invocations)."""
    if until is not None and until not in STEPS:
        raise ValueError(f"--until must be one of {', '.join(STEPS)}, got {until!r}")
    unknown = sorted(set(force) - set(STEPS))
    if unknown:
        raise ValueError(f"--force: unknown steps {unknown}; steps: {', '.join(STEPS)}")
    threads = torch.get_num_threads()
    try:
        return _train_steps(config, command, until, force)
    finally:
        torch.set_num_threads(threads)  # a library call leaves the process as it found it


def _train_steps(config: DictConfig, command: str, until: str | None,
                 force: Sequence[str]) -> dict[str, float]:
    torch.set_num_threads(config.threads)
    work_dir(config).mkdir(parents=True, exist_ok=True)
    checkpoint_dir(config).mkdir(parents=True, exist_ok=True)
    runners = {"data": step_data, "vae": step_vae, "encoder": step_encoder,
               "codes": step_codes, "latents": step_latents, "dit": step_dit,
               "ship": lambda c: step_ship(c, command)}
    # Whether a step runs is decided when the loop reaches it: its inputs include the files the
    # steps before it have just written (step_inputs), so a retrained VAE re-caches the latents.
    def pending(name: str) -> bool:
        return name in force or not step_done(config, name)

    _log_invocation(config, command, [name for name in STEPS if pending(name)])
    side = _start_side_step(config, pending) if until not in ("data", "vae") else None
    if side is not None:
        torch.set_num_threads(1)  # the VAE's share of the two cores
    for name in STEPS:
        if name == "encoder" and side is not None:
            _finish_side_step(config, side)
            torch.set_num_threads(config.threads)
        elif not pending(name):
            LOG.info("demo step %s: done already, skipped", name)
        else:
            LOG.info("demo step %s ...", name)
            start = time.perf_counter()
            seconds = runners[name](config)  # a step may report its own (see step_vae)
            if name != "ship":
                _record_time(config, name, seconds or time.perf_counter() - start)
            if name not in ("data", "ship"):
                _store(config, name)
            LOG.info("demo step %s: %.0f s", name, time.perf_counter() - start)
        if name == until:
            break
    return _timings(config)


def _start_side_step(config: DictConfig, pending: Callable[[str], bool]):
    """With ``parallel`` set and both the VAE and the encoder to train, start the encoder in
    a second process (one thread each: on two cores that beats two threads in turn, as
    the small convolutions scale poorly across threads). ``None`` when it does not apply."""
    if not config.parallel or pending("data") or not (pending("vae") and pending("encoder")):
        return None
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_side_encoder, args=(OmegaConf.to_container(config),),
                              name="demo-encoder")
    process.start()
    LOG.info("demo step encoder: started beside the VAE (pid %d)", process.pid)
    return process


def _side_encoder(container: dict) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [encoder] %(message)s",
                        datefmt="%H:%M:%S")
    config = OmegaConf.create(container)
    torch.set_num_threads(1)
    start = time.perf_counter()
    step_encoder(config)
    _record_time(config, "encoder", time.perf_counter() - start, "timings.encoder.json")
    _store(config, "encoder")


def _finish_side_step(config: DictConfig, process) -> None:
    process.join()
    if process.exitcode != 0 or not step_done(config, "encoder"):
        raise RuntimeError(f"the expression encoder process failed (exit code "
                           f"{process.exitcode}); see its log lines above")
    LOG.info("demo step encoder: finished beside the VAE")


def _log_invocation(config: DictConfig, command: str, pending: list[str]) -> None:
    """Append ``command`` to ``commands.json`` when it has steps to run: demo.json then lists
    every invocation that built the shipped files (a resumed or partly forced run has many).
    ``pending``: the steps that look due now (later ones may become due as it runs)."""
    if set(pending) <= {"ship"}:
        return
    path = work_dir(config) / "commands.json"
    commands = json.loads(path.read_text()) if path.is_file() else []
    atomic_write_bytes(path, json.dumps([*commands, command], indent=1).encode())


def _data_complete(config: DictConfig) -> bool:
    from factorportrait.data.format import read_manifest
    from factorportrait.data.synthetic import plan_clips

    try:
        return len(read_manifest(data_root(config))) == len(plan_clips(synthetic_config(config)))
    except (FileNotFoundError, ValueError):
        return False


def _marker(config: DictConfig, name: str) -> Path:
    return work_dir(config) / f"{name}.done.json"


def _stored(config: DictConfig, name: str) -> dict:
    """The inputs step ``name`` was last run with (``FileNotFoundError`` if never)."""
    return json.loads(_marker(config, name).read_text())


def _store(config: DictConfig, name: str) -> None:
    atomic_write_bytes(_marker(config, name),
                       json.dumps(step_inputs(config, name), indent=1).encode())


def _timings(config: DictConfig) -> dict[str, float]:
    """Seconds per step, from ``timings.json`` and the side process's own file."""
    timings = {}
    for path in sorted(work_dir(config).glob("timings*.json")):
        timings.update(json.loads(path.read_text()))
    return {name: timings[name] for name in STEPS if name in timings}


def _record_time(config: DictConfig, name: str, seconds: float,
                 file: str = "timings.json") -> None:
    path = work_dir(config) / file
    timings = {**(json.loads(path.read_text()) if path.is_file() else {}),
               name: round(seconds, 1)}
    atomic_write_bytes(path, json.dumps(timings, indent=1).encode())


def _copy(source: Path, target: Path, names: Sequence[str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        data = (source / name).read_bytes()
        atomic_write_bytes(target / name, data)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
