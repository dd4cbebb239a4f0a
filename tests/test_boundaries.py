"""Every boundary holds (issue 15): no silent black videos, no tracebacks, checks before
weights, fair bad-clip replacement, exact resume whatever the thread count, no unpickling of
files we did not write, no allocation for absurd configs, no lost checkpoint directories."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from factorportrait.cli.render import main
from factorportrait.diffusion.guidance import Guidance
from factorportrait.diffusion.sampler import NonFiniteLatentsError
from factorportrait.io.video import read_image
from factorportrait.models.weights import WeightsMismatchError, recover_directory, \
    replace_directory
from factorportrait.pipeline import FactorPortraitPipeline
from tests.pipeline_helpers import FRAMES, SIZE, driving_track, reference_image, tiny_dit, \
    tiny_pipeline, tiny_vae


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds")
    tiny_dit().save_pretrained(root / "ckpt")
    tiny_vae().save_pretrained(root / "ckpt")
    Image.fromarray(reference_image().numpy()).save(root / "face.png")
    driving_track(frames=9).save(root / "perf.safetensors")
    return root


@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights is an error: a refusal under it happened before any."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the inputs were checked")
    monkeypatch.setattr(FactorPortraitPipeline, "from_pretrained", refuse)


def cli(files, *args, out="out.mp4", tmp_path=None, extra=()):
    target = (tmp_path / out) if tmp_path is not None else out
    return main([str(files / "face.png"), "--checkpoint", str(files / "ckpt"),
                 "--control-track", str(files / "perf.safetensors"), "--frames", "9",
                 "--steps", "2", *args, "--out", str(target), *extra])


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("factorportrait-render:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- wrong and silent ------------------------------------------------------------------------

def test_nan_weights_are_refused_when_loaded(files, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan"
    tiny_dit().save_pretrained(folder)
    state = load_file(str(folder / "model.safetensors"))
    state["blocks.0.self_attn.q.weight"][0, 0] = float("nan")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    from factorportrait.models.dit import FactorPortraitDiT
    with pytest.raises(ValueError, match="'blocks.0.self_attn.q.weight' has non-finite values "
                                         r"\(NaN/Inf\) in 1 of"):
        FactorPortraitDiT.from_pretrained(folder)


def test_a_model_that_overflows_stops_the_sampler_naming_the_causes():
    dit = FactorPortraitDiT_with_nan()
    pipe = FactorPortraitPipeline(dit, tiny_vae())
    with pytest.raises(NonFiniteLatentsError, match="non-finite latents at step 1 of 2.*"
                                                    "guidance scale"):
        pipe(reference_image(), mode="driving", control_track=driving_track(), num_steps=2,
             progress=False)


def FactorPortraitDiT_with_nan():
    import copy
    dit = copy.deepcopy(tiny_dit())
    with torch.no_grad():
        dit.head.head.weight.fill_(float("nan"))
    return dit


def test_huge_guidance_scales_are_refused(files, capsys, no_weights, tmp_path):
    with pytest.raises(ValueError, match=r"guidance scale must be a number in \[0, 50\]"):
        Guidance("cfg", 1e30)
    assert cli(files, "--guidance-scale", "1e30", tmp_path=tmp_path) == 2
    assert "guidance scale" in one_error(capsys)


def test_nan_normal_maps_and_nan_references_are_refused():
    pipe = tiny_pipeline()
    maps = torch.full((FRAMES, 3, SIZE, SIZE), 0.5)
    maps[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="normal_maps: NaN/Inf"):
        pipe.check_inputs(reference_image(), mode="driving", control_track=driving_track(),
                          normal_maps=maps)
    with pytest.raises(ValueError, match=r"reference_image: \d+ of \d+ values are NaN/Inf"):
        pipe.check_inputs(torch.full((3, SIZE, SIZE), float("nan")), mode="camera_only",
                          camera_trajectory="orbit")


def test_a_16_bit_grey_png_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 1000, 20000]] * 16, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    image = read_image(tmp_path / "grey16.png")
    assert image.shape == (32, 3, 3) and torch.equal(image[..., 0], image[..., 2])
    assert image[0, :, 0].tolist() == [0, 1, 128] and image[1, 0, 0] == 255


def test_tiny_images_and_zero_fps_are_refused(files, tmp_path, capsys, no_weights):
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    with pytest.raises(ValueError, match="reference_image is 1x1 pixels: too small"):
        tiny_pipeline().check_inputs(tmp_path / "dot.png", mode="driving",
                                     control_track=driving_track())
    assert cli(files, "--fps", "0", tmp_path=tmp_path) == 2
    assert "fps (--fps) must be a number in (0, 240], got 0.0" in one_error(capsys)


# -- tracebacks instead of one line ----------------------------------------------------------

def test_broken_vae_files_are_one_line(files, tmp_path, capsys):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(files / "ckpt", broken)
    data = (broken / "vae.safetensors").read_bytes()
    (broken / "vae.safetensors").write_bytes(data[:len(data) // 3])
    args = [str(files / "face.png"), "--control-track", str(files / "perf.safetensors"),
            "--frames", "9", "--out", str(tmp_path / "x.mp4")]
    assert main([*args, "--checkpoint", str(broken)]) == 2
    assert "VAE weights" in one_error(capsys) and not (tmp_path / "x.mp4").exists()
    (tmp_path / "notes.pth").write_text("not weights")
    assert main([*args, "--checkpoint", str(files / "ckpt"), "--vae",
                 str(tmp_path / "notes.pth")]) == 2
    assert "is not a torch weights file" in one_error(capsys)


@pytest.mark.parametrize("device, words", [("tpu9", "expected auto, cpu, cuda or cuda:N"),
                                           ("cuda", "no CUDA GPU is available")])
def test_bad_devices_are_usage_errors(files, tmp_path, capsys, no_weights, device, words):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert cli(files, "--device", device, tmp_path=tmp_path) == 2
    assert words in one_error(capsys)


def test_reference_frame_out_of_range_and_a_folder_as_out(files, tmp_path, capsys, no_weights):
    assert cli(files, "--reference-track", str(files / "perf.safetensors"),
               "--reference-frame", "99", tmp_path=tmp_path) == 2
    assert "--reference-frame 99: the reference track" in one_error(capsys)
    (tmp_path / "folder.mp4").mkdir()
    assert cli(files, out="folder.mp4", tmp_path=tmp_path) == 2
    assert "is a folder; name an .mp4 file" in one_error(capsys)


def test_a_render_too_big_for_memory_is_refused_with_the_figure(files, tmp_path, capsys,
                                                                no_weights):
    assert cli(files, "--height", "16384", "--width", "16384", tmp_path=tmp_path) == 2
    line = one_error(capsys)
    assert "16384 x 16384 render of 9 frames needs about" in line and "TiB" in line
    assert "free" in line and not (tmp_path / "out.mp4").exists()


# -- checked too late or misleadingly --------------------------------------------------------

def test_inputs_are_checked_before_weights_are_loaded(files, tmp_path, capsys, no_weights):
    assert main([str(tmp_path / "missing.png"), "--checkpoint", str(files / "ckpt"),
                 "--control-track", str(files / "perf.safetensors"), "--out",
                 str(tmp_path / "y.mp4")]) == 2
    assert "missing.png does not exist" in one_error(capsys)
    assert cli(files, tmp_path=tmp_path, out="nowhere/z.mp4") == 2
    assert "does not exist" in one_error(capsys)


def test_usage_errors_name_the_input(files, tmp_path, capsys, no_weights):
    cases = [
        (["--mode", "camera_only", "--trajectory", "orbit", "--traj", "degrees=abc"],
         "degrees must be a number, got 'abc'"),
        (["--seed", "99999999999999999999999"], "--seed must be an integer in [0, 2^63)"),
        (["--traj", "degrees=3"], "--traj needs --trajectory"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--window-frames", "6"], "window_frames (--window-frames) must be 4k + 1"),
    ]
    for args, words in cases:
        if "camera_only" in args:  # no control track in camera_only
            code = main([str(files / "face.png"), "--checkpoint", str(files / "ckpt"), *args,
                         "--frames", "9", "--out", str(tmp_path / "u.mp4")])
        else:
            code = cli(files, *args, tmp_path=tmp_path)
        assert code == 2, args
        assert words in one_error(capsys), args


def test_image_errors_say_what_the_image_is(files, tmp_path, capsys, no_weights):
    (tmp_path / "dir.png").mkdir()
    assert main([str(tmp_path / "dir.png"), "--checkpoint", str(files / "ckpt"),
                 "--control-track", str(files / "perf.safetensors"),
                 "--out", str(tmp_path / "a.mp4")]) == 2
    assert "is a folder, not an image file" in one_error(capsys)
    Image.fromarray(np.zeros((32, 33, 3), np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match=r"reference_image is 33x32 pixels .*--height/--width"):
        tiny_pipeline().check_inputs(tmp_path / "odd.png", mode="driving",
                                     control_track=driving_track())


def test_the_readme_preview_example_works(files, tmp_path):
    sheet = tmp_path / "sheet.png"
    assert main([str(files / "face.png"), "--mode", "camera_only", "--trajectory", "orbit",
                 "--preview", str(sheet)]) == 0
    assert sheet.is_file()


# -- training data ---------------------------------------------------------------------------

def test_non_finite_annotations_and_wrong_manifest_lengths_are_bad_clips(tmp_path):
    from factorportrait.data import PortraitClipDataset, read_manifest, write_manifest
    from factorportrait.data.annotations import load_annotations, save_annotations
    from tests.tiny_dataset import add_clip

    for i in range(4):
        add_clip(tmp_path, f"good{i}", frames=9, normals=False, seed=i)
    add_clip(tmp_path, "nan_expression", frames=9, normals=False, seed=9)
    path = tmp_path / "annotations/nan_expression.safetensors"
    annotations = load_annotations(path)
    annotations.expression[3, 2] = float("nan")
    save_annotations(path, annotations)
    add_clip(tmp_path, "long_manifest", frames=9, normals=False, seed=10)
    records = [r if r.id != "long_manifest" else
               type(r)(**{**r.__dict__, "num_frames": 40}) for r in read_manifest(tmp_path)]
    write_manifest(tmp_path / "manifest.jsonl", records)
    dataset = PortraitClipDataset(tmp_path, 5, window_step=1, max_bad_fraction=0.5)
    samples = [dataset[i, draw] for i in range(len(dataset)) for draw in range(3)]
    assert "annotation expression has NaN/Inf values at frame 3" in \
        dataset.bad_clips["nan_expression"]
    assert "the manifest says 40 frames" in dataset.bad_clips["long_manifest"]
    assert all(torch.isfinite(s["expression"]).all() for s in samples)


def test_replacements_are_fair_draws_among_the_kinds_good_clips(tmp_path):
    from factorportrait.data import PortraitClipDataset
    from tests.tiny_dataset import add_clip

    for i in range(4):
        add_clip(tmp_path, f"good{i}", frames=5, normals=False, seed=i, expression=None)
    add_clip(tmp_path, "broken", frames=5, normals=False, seed=7, expression=None)
    (tmp_path / "annotations/broken.safetensors").write_bytes(b"not safetensors")
    dataset = PortraitClipDataset(tmp_path, 5, max_bad_fraction=0.5)
    index = [r.id for r in dataset.records].index("broken")
    picks = [dataset[index, draw]["clip_id"] for draw in range(200)]
    counts = [picks.count(f"good{i}") for i in range(4)]
    assert sum(counts) == 200 and min(counts) > 30, counts  # ≈ 50 each, not 200 for one


def test_bad_clips_reach_metrics_and_the_trainer_state(tmp_path):
    from factorportrait.models.vae import VAEConfig, WanVAE
    from factorportrait.training import train
    from factorportrait.training.checkpoint import latest_checkpoint, read_trainer_state
    from factorportrait.training.metrics import read_metrics
    from tests.tiny_dataset import add_clip
    from tests.training_recipes import tiny_config

    root = tmp_path / "data"
    for i in range(3):
        add_clip(root, f"good{i}", frames=13, height=64, width=64, normals=False, seed=i)
    add_clip(root, "broken", frames=13, height=64, width=64, normals=False, seed=5)
    (root / "annotations/broken.safetensors").write_bytes(b"garbage")
    torch.manual_seed(0)
    WanVAE(VAEConfig.small(dim=8)).save_pretrained(tmp_path / "vae")
    config = tiny_config(tmp_path / "runs", "data=synthetic", f"data.options.root={root}",
                         f"data.options.vae={tmp_path / 'vae'}", "data.options.latents=false",
                         "data.options.max_bad_fraction=0.5", "data.num_workers=0",
                         "stage.steps=4", "checkpoint.every=4", "validation.every=0",
                         "train.global_batch_size=4", "train.micro_batch_size=4")
    result = train(config)
    last = read_metrics(result.stage_dir)[-1]
    assert last["bad_clips"] == {"phone": 1}
    state = read_trainer_state(latest_checkpoint(result.stage_dir / "checkpoints"))
    assert state["bad_clips"] == {"phone": ["broken"]}
    assert state["torch_threads"] == torch.get_num_threads()


# -- reproducibility and security ------------------------------------------------------------

def test_resume_restores_the_saved_thread_count(tmp_path, caplog):
    from factorportrait.training.loop import restore_threads

    threads = torch.get_num_threads()
    other = 1 if threads != 1 else 2
    try:
        with caplog.at_level(logging.WARNING):
            restore_threads(other, tmp_path)
        assert torch.get_num_threads() == other
        assert f"written with {other} torch threads" in caplog.text
    finally:
        torch.set_num_threads(threads)


def test_deepspeed_files_we_did_not_write_are_never_loaded(tmp_path):
    from factorportrait.training.checkpoint import digest_folder, verify_folder

    native = tmp_path / "deepspeed"
    native.mkdir()
    (native / "mp_rank_00_model_states.pt").write_bytes(b"saved by deepspeed")
    digests = digest_folder(native)
    verify_folder(native, digests)  # what we wrote: fine
    (native / "zz_planted.pt").write_bytes(b"cos\nsystem\n(S'echo owned'\ntR.")
    with pytest.raises(ValueError, match=r"not written by this run: \['zz_planted.pt'\]"):
        verify_folder(native, digests)
    (native / "zz_planted.pt").unlink()
    (native / "mp_rank_00_model_states.pt").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="changed since saved"):
        verify_folder(native, digests)
    with pytest.raises(ValueError, match="records no digests"):
        verify_folder(native, None)


def test_an_absurd_config_is_refused_before_anything_is_allocated(tmp_path):
    import resource

    from factorportrait.models.dit import FactorPortraitDiT

    folder = tmp_path / "absurd"
    tiny_dit().save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    data["config"].update(dim=65536, ffn_dim=262144, num_heads=512, num_layers=64)
    (folder / "config.json").write_text(json.dumps(data))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WeightsMismatchError, match="B parameters, more than the 20 B accepted"):
        FactorPortraitDiT.from_pretrained(folder)
    with pytest.raises(WeightsMismatchError, match="B parameters"):
        FactorPortraitPipeline.from_pretrained(folder)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20  # GiB
    assert grown < 1.0, grown


def test_replacing_a_directory_never_leaves_it_missing(tmp_path):
    target, new = tmp_path / "final", tmp_path / ".final.tmp"
    target.mkdir()
    (target / "v").write_text("old")
    new.mkdir()
    (new / "v").write_text("new")
    replace_directory(new, target)
    assert (target / "v").read_text() == "new" and not new.exists()
    # a kill between the two renames of the fallback path: the old version comes back
    target.rename(tmp_path / ".final.old")
    recover_directory(target)
    assert (target / "v").read_text() == "new" and not (tmp_path / ".final.old").exists()
    assert math.isfinite(1.0)
