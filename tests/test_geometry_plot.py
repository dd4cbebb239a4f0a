"""The trajectory picture and the tools/trajectory.py command."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from factorportrait.geometry import dolly, load_cameras, make_trajectory, orbit, sequence
from factorportrait.geometry.plot import estimate_target, plot_trajectory

F64 = torch.float64

REPO = Path(__file__).resolve().parents[1]


def load_cli():
    path = REPO / "tools" / "trajectory.py"
    spec = importlib.util.spec_from_file_location("trajectory_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_png(path: Path) -> torch.Tensor:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return torch.from_numpy(imread(path))


def test_estimate_target() -> None:
    target = torch.tensor([0.05, -0.02, 0.1], dtype=F64)
    estimate = estimate_target(orbit(12, 270.0, target=target.tolist(), dtype=F64))
    assert_close(estimate, target)
    assert estimate_target(dolly(5)) is None  # parallel optical axes: no unique point


def test_plot_trajectory_writes_a_png(tmp_path: Path) -> None:
    cams = sequence(orbit(20, 180.0), dolly(5, 0.4, yaw_deg=180.0))
    plot_trajectory(cams, tmp_path / "traj.png", target=(0.0, 0.0, 0.0), dpi=50)
    image = read_png(tmp_path / "traj.png")
    assert image.shape[:2] == (320, 320)  # 6.4 in × 50 dpi
    assert float(image[..., :3].std()) > 0.05  # something was drawn
    assert [p.name for p in tmp_path.iterdir()] == ["traj.png"]


@pytest.mark.parametrize("export", ["traj.json", "traj_transforms.json", "traj.txt"])
def test_cli_draws_and_exports_a_trajectory_that_loads_back(tmp_path: Path, export: str) -> None:
    cli = load_cli()
    out, exported = tmp_path / "traj.png", tmp_path / export
    args = ["orbit", "--frames", "9", "--degrees", "90", "--distance", "0.5",
            "--easing", "ease_in_out", "--width", "256", "--height", "192",
            "--out", str(out), "--export", str(exported)]
    assert cli.main(args) == 0
    assert read_png(out).shape[0] > 100
    expected = make_trajectory("orbit", frames=9, degrees=90.0, distance=0.5, easing="ease_in_out",
                               width=256, height=192)
    loaded = load_cameras(exported, width=256, height=192)
    assert (loaded.width, loaded.height) == (256, 192)
    assert_close(loaded.K, expected.K, atol=1e-6, rtol=0)
    assert_close(loaded.c2w, expected.c2w, atol=1e-6, rtol=0)
    # the exported file can be drawn again with --file
    replot = tmp_path / "again.png"
    args = ["--file", str(exported), "--width", "256", "--height", "192", "--out", str(replot)]
    assert cli.main(args) == 0
    assert replot.exists()


@pytest.mark.parametrize("args", [
    ["wobble", "--frames", "5", "--out", "x.png"],  # unknown preset
    ["dolly", "--frames", "5", "--degrees", "30", "--out", "x.png"],  # parameter the preset lacks
    ["orbit", "--frames", "0", "--out", "x.png"],  # impossible parameter
    ["--out", "x.png"],  # neither preset nor file
])
def test_cli_rejects_bad_requests(tmp_path: Path, args: list[str],
                                  capsys: pytest.CaptureFixture) -> None:
    cli = load_cli()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([a if a != "x.png" else str(tmp_path / a) for a in args])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
