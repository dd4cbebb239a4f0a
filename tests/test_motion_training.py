"""Training the motion trainer (factorportrait/motion/train.py): data, a short run, exact
resume, save/load and the recipe loader. Tiny configs at 64 px on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from factorportrait.expression.sets import identity_seeds
from factorportrait.models.expression_encoder import ExpressionEncoder
from factorportrait.motion.augment import mask_eyes_and_mouth
from factorportrait.motion.data import (
    LandmarkPool,
    MotionSampling,
    render_motion_batch,
    step_generator,
)
from factorportrait.motion.model import MotionTrainer
from factorportrait.motion.step import InputSettings, motion_inputs
from factorportrait.motion.train import MotionTrainConfig, config_from_recipe, train_motion
from factorportrait.training.checkpoint import latest_checkpoint, list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "motion.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(output: Path, **overrides) -> MotionTrainConfig:
    values = {"preset": "tiny", "batch_size": 2, "identities": 3, "steps": 4, "warmup_steps": 2,
              "adversarial_start": 1, "save_every": 2, "log_every": 100, "eval_batches": 0,
              "output_dir": str(output)}
    return MotionTrainConfig(**{**values, **overrides})


def test_batch_is_deterministic_and_consistent():
    pool = LandmarkPool(identity_seeds(2, "train"))
    sampling = MotionSampling(views=3)
    batch = render_motion_batch(pool, 2, 64, sampling, step_generator(0, 5))
    again = render_motion_batch(pool, 2, 64, sampling, step_generator(0, 5))
    assert torch.equal(batch.views, again.views) and torch.equal(batch.source, again.source)
    assert batch.views.shape == (2, 3, 3, 64, 64) and batch.view_poses.shape == (2, 3, 3, 4)
    assert batch.source.min() >= -1 and batch.source.max() <= 1
    # Source and driving differ (other expression and pose); the views of one instant share
    # the expression but not the camera, so their ground-truth poses differ.
    assert (batch.source - batch.driving).abs().mean() > 0.01
    assert (batch.view_poses[:, 0] - batch.view_poses[:, 1]).abs().max() > 0.05
    # The masked regions cover the projected eyes and mouth: the landmarks lie on the face.
    masked = mask_eyes_and_mouth(batch.driving, batch.driving_landmarks)
    changed = (masked != batch.driving).any(1).float().mean()
    assert 0.002 < changed < 0.1
    # The ground-truth pose's translation is the projected head centre (near the image centre).
    assert batch.driving_pose[:, :2, 3].abs().max() < 0.5


def test_short_run_writes_checkpoint_and_weights(tmp_path):
    config = tiny_config(tmp_path / "run", steps=3, eval_batches=1)
    result = train_motion(config, log=None)
    assert result.steps == 3 and len(result.history) == 3
    assert all(torch.isfinite(torch.tensor(h["generator"])) for h in result.history)
    assert result.history[0]["discriminator"] == 0.0 and result.history[1]["discriminator"] > 0
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [2, 3]
    summary = json.loads((tmp_path / "run" / "training.json").read_text())
    assert summary["steps"] == 3 and summary["history"] == result.history
    heldout = summary["heldout"]  # scored on held-out identities
    assert heldout["identity_baseline"] > 0.01 and 0 <= heldout["rotation_deg"] < 180
    assert all(torch.isfinite(torch.tensor(v)) for v in heldout.values())
    loaded = MotionTrainer.from_pretrained(tmp_path / "run" / "model")
    for key, value in result.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    encoder = ExpressionEncoder.from_pretrained(tmp_path / "run" / "model")
    crop = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(encoder(crop), loaded.expression(crop))


def test_resume_is_exact(tmp_path):
    full = train_motion(tiny_config(tmp_path / "full"), log=None)
    first = train_motion(tiny_config(tmp_path / "split", steps=2), log=None)
    assert first.history == full.history[:2]
    torch.manual_seed(1234)  # the resumed run must not depend on the caller's RNG
    resumed = train_motion(tiny_config(tmp_path / "split"), log=None)
    assert resumed.steps == 4
    assert resumed.history == full.history
    assert torch.equal(torch.tensor([h["generator"] for h in resumed.history]),
                       torch.tensor([h["generator"] for h in full.history]))
    for name in ("model", "discriminator"):
        reference = getattr(full, name).state_dict()
        for key, value in getattr(resumed, name).state_dict().items():
            assert torch.equal(value, reference[key]), f"{name}.{key}"


def test_resume_refuses_other_settings(tmp_path):
    train_motion(tiny_config(tmp_path / "run", steps=2), log=None)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is not None
    with pytest.raises(ValueError, match="batch_size"):
        train_motion(tiny_config(tmp_path / "run", batch_size=3), log=None)


def test_recipe_loads_and_refuses_unknown_keys(tmp_path):
    config = config_from_recipe(RECIPE, ["steps=7", "loss.adversarial=0.5", "sampling.views=3"])
    assert (config.steps, config.loss.adversarial, config.sampling.views) == (7, 0.5, 3)
    assert config.model_config().image_size == 64
    for bad, name in (("learning_rate=1", "learning_rate"), ("loss.gan=1", "loss.gan"),
                      ("model.width=3", "model.width")):
        with pytest.raises(ValueError, match=name):
            config_from_recipe(RECIPE, [bad])
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(RECIPE.read_text() + "\nnot_a_setting: 1\n")
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "train_motion.py"), "--recipe",
                          str(recipe), "--print-config"], capture_output=True, text=True,
                         cwd=ROOT, check=False)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "not_a_setting" in lines[0]


TINY_RUN = ["preset=tiny", "batch_size=4", "identities=3", "steps=4", "warmup_steps=2",
            "adversarial_start=1", "save_every=2", "log_every=100", "eval_batches=0",
            "threads=1"]


def _torchrun_motion(output: Path, *overrides: str) -> dict:
    """``tools/train_motion.py`` on 2 gloo processes (the recipe, tiny, batch 4); its
    training.json."""
    args = [*TINY_RUN, f"output_dir={output}", *overrides]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", str(ROOT / "tools" / "train_motion.py"),
                             *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output / "training.json").read_text())


@pytest.mark.slow
def test_two_processes_equal_one_process_of_two_micro_batches(tmp_path):
    """Data parallel: 2 processes of 2 samples each give the loss history and weights of one
    process whose batch of 4 is cut into 2 micro-batches, bit for bit; stopped after 2 steps
    and resumed, the 2 processes continue the same curve."""
    split = _torchrun_motion(tmp_path / "split")
    one = train_motion(config_from_recipe(RECIPE, [*TINY_RUN, "accumulation=2",
                                                   f"output_dir={tmp_path / 'one'}"]), log=None)
    assert split["steps"] == 4 and split["history"] == one.history
    assert split["history"][-1]["discriminator"] > 0  # the GAN terms ran too
    trained = MotionTrainer.from_pretrained(tmp_path / "split" / "model")
    reference = dict(one.model.named_parameters())
    for name, value in trained.named_parameters():
        assert torch.equal(value, reference[name]), name
    # BatchNorm's running statistics are process 0's micro-batch only (as DDP broadcasts
    # process 0's buffers); the one process updated them with both micro-batches
    buffers = dict(one.model.named_buffers())
    assert any(not torch.equal(value, buffers[name])
               for name, value in trained.named_buffers() if "running_mean" in name)
    _torchrun_motion(tmp_path / "resumed", "steps=2")
    resumed = _torchrun_motion(tmp_path / "resumed")
    assert resumed["history"] == split["history"]


def test_processes_and_micro_batches_must_divide_the_batch(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size \(6\) must divide into accumulation "
                                         r"\(4\) equal micro-batches"):
        tiny_config(tmp_path, batch_size=6, accumulation=4)
    with pytest.raises(ValueError, match="device must be one of cpu, cuda, auto"):
        tiny_config(tmp_path, device="tpu")
    from factorportrait.motion.train import _check_processes

    with pytest.raises(ValueError, match=r"batch_size \(4\) must divide into 3 process\(es\) "
                                         r"x accumulation \(1\) = 3"):
        _check_processes(tiny_config(tmp_path, batch_size=4), 3)


def test_resume_needs_the_same_micro_batches_per_step(tmp_path):
    train_motion(tiny_config(tmp_path / "run", steps=2, batch_size=4), log=None)
    with pytest.raises(ValueError, match=r"cut each step's batch into 1 micro-batch\(es\) "
                                         r"\(processes x accumulation\), this run into 2"):
        train_motion(tiny_config(tmp_path / "run", batch_size=4, accumulation=2), log=None)


def test_a_share_of_the_batch_renders_the_same_frames():
    """A data-parallel process draws the whole batch but rasterises only its samples: those
    frames equal the whole batch's bit for bit, every landmark and pose is there, and the
    other images are zero."""
    pool = LandmarkPool(identity_seeds(3, "train", 0))
    whole = render_motion_batch(pool, 4, 64, MotionSampling(), step_generator(0, 5))
    share = render_motion_batch(pool, 4, 64, MotionSampling(), step_generator(0, 5), range(2, 4))
    for name in ("source", "driving", "views"):
        full, part = getattr(whole, name), getattr(share, name)
        assert torch.equal(part[2:], full[2:]) and not part[:2].any(), name
    for name in ("source_landmarks", "driving_landmarks", "source_pose", "driving_pose",
                 "view_landmarks", "expression", "identity"):
        assert torch.equal(getattr(share, name), getattr(whole, name)), name


def test_the_expression_input_can_come_from_another_avatar():
    pool = LandmarkPool(identity_seeds(3, "train", 0))
    plain = render_motion_batch(pool, 4, 64, MotionSampling(), step_generator(0, 5))
    assert plain.other is None and plain.use_other is None  # 0: nothing drawn for it
    sampling = MotionSampling(other_identity_probability=1.0)
    whole = render_motion_batch(pool, 4, 64, sampling, step_generator(0, 5))
    assert torch.equal(whole.views, plain.views) and torch.equal(whole.source, plain.source)
    assert whole.use_other.all() and whole.other.shape == whole.driving.shape
    assert ((whole.other - whole.driving).abs().mean(dim=(1, 2, 3)) > 0.05).all()
    share = render_motion_batch(pool, 4, 64, sampling, step_generator(0, 5), range(2, 4))
    assert torch.equal(share.other[2:], whole.other[2:]) and not share.other[:2].any()
    assert torch.equal(share.other_landmarks, whole.other_landmarks)
    inputs = motion_inputs(whole, 32, InputSettings(cross_view_probability=0.0),
                           step_generator(0, 5))
    same = motion_inputs(plain, 32, InputSettings(cross_view_probability=0.0),
                         step_generator(0, 5))
    assert not torch.equal(inputs["expression_input"], same["expression_input"])
    assert torch.equal(inputs["target"], same["target"])
    with pytest.raises(ValueError, match="other_identity_probability must be in"):
        MotionSampling(other_identity_probability=1.5)
