"""factorportrait-render: writes an mp4 decord reads back; --preview; clear input errors."""

import numpy as np
import pytest
from PIL import Image

from factorportrait.cli.render import UsageError, build_parser, main, trajectory_argument
from tests.pipeline_helpers import (FRAMES, SIZE, driving_track, reference_image, tiny_dit,
                                    tiny_vae)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint directory (DiT + VAE), a reference PNG and a control track."""
    root = tmp_path_factory.mktemp("cli")
    tiny_dit().save_pretrained(root / "ckpt")
    tiny_vae().save_pretrained(root / "ckpt")
    Image.fromarray(reference_image().numpy()).save(root / "face.png")
    driving_track(frames=9).save(root / "perf.safetensors")
    return root


@pytest.mark.slow
def test_cli_writes_an_mp4_with_the_requested_frames_and_size(files, tmp_path):
    import decord

    out = tmp_path / "out.mp4"
    code = main([str(files / "face.png"), "--checkpoint", str(files / "ckpt"), "--mode",
                 "driving_with_camera", "--control-track", str(files / "perf.safetensors"),
                 "--trajectory", "orbit", "--traj", "degrees=45", "--traj", "easing=ease_in_out",
                 "--frames", str(FRAMES), "--steps", "2", "--seed", "3", "--avatar-seed", "3",
                 "--out", str(out)])
    assert code == 0
    reader = decord.VideoReader(str(out))
    assert len(reader) == FRAMES
    assert reader[0].shape == (SIZE, SIZE, 3)


def test_preview_draws_the_conditions_without_weights(files, tmp_path):
    sheet = tmp_path / "sheet.png"
    code = main([str(files / "face.png"), "--mode", "driving_with_camera", "--control-track",
                 str(files / "perf.safetensors"), "--trajectory", "orbit", "--traj",
                 "degrees=60", "--avatar-seed", "3", "--preview", str(sheet)])
    assert code == 0
    image = np.asarray(Image.open(sheet))
    assert image.ndim == 3 and image.shape[0] > 4 * 128 and image.shape[1] > 8 * 128
    assert image.std() > 10  # something was drawn


def test_input_errors_exit_2_with_a_message_and_no_file(files, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code = main([str(files / "face.png"), "--checkpoint", str(files / "ckpt"),
                 "--control-track", str(files / "perf.safetensors"), "--frames", "6",
                 "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "num_frames must be 4k + 1" in capsys.readouterr().err
    code = main([str(files / "face.png"), "--checkpoint", str(files / "ckpt"), "--preset",
                 "wan_14b", "--control-track", str(files / "perf.safetensors"), "--out",
                 str(out)])
    assert code == 2 and "not the requested preset 'wan_14b'" in capsys.readouterr().err
    assert main([str(files / "face.png"), "--control-track", str(files / "perf.safetensors")]) == 2
    assert "factorportrait-render: error: rendering needs --checkpoint and --out" in \
        capsys.readouterr().err


def test_trajectory_arguments():
    parse = build_parser().parse_args
    args = parse(["f.png", "--trajectory", "spiral", "--traj", "degrees=90",
                  "--traj", "end-elevation-deg=10.5", "--traj", "easing=linear"])
    assert trajectory_argument(args) == ("spiral", {"degrees": 90, "end_elevation_deg": 10.5,
                                                    "easing": "linear"})
    assert str(trajectory_argument(parse(["f.png", "--trajectory", "cams.json"]))) == "cams.json"
    with pytest.raises(UsageError, match="KEY=VALUE"):
        trajectory_argument(parse(["f.png", "--trajectory", "orbit", "--traj", "degrees"]))
