"""Bad input: each raises a clear error naming the input, before any heavy work starts.

The pipeline here is made of components that fail loudly if anything touches them (DiT, VAE,
mesh source), so an error raised by the pipeline proves that no heavy work had begun.
"""

import pytest
import torch

from factorportrait import DiTConfig
from factorportrait.geometry import make_trajectory, save_cameras
from factorportrait.inference import ControlTrack
from factorportrait.inference.loading import load_text_encoder
from factorportrait.io.video import write_video
from factorportrait.models.weights import WeightsMismatchError
from factorportrait.pipeline import FactorPortraitPipeline
from tests.pipeline_helpers import FRAMES, SIZE, driving_track, reference_image


class HeavyWork(AssertionError):
    pass


class Untouchable(torch.nn.Module):
    """A DiT / VAE / mesh source stand-in whose every use is an error."""

    config = DiTConfig.tiny()
    faces = torch.zeros(1, 3, dtype=torch.long)

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        raise HeavyWork("the DiT ran")

    def encode(self, *args, **kwargs):
        raise HeavyWork("the VAE encoded")

    def encode_image(self, *args, **kwargs):
        raise HeavyWork("the VAE encoded")

    def decode(self, *args, **kwargs):
        raise HeavyWork("the VAE decoded")

    def vertices(self, *args, **kwargs):
        raise HeavyWork("a mesh was posed")


@pytest.fixture
def pipe():
    return FactorPortraitPipeline(Untouchable(), Untouchable(), mesh_source=Untouchable())


@pytest.fixture
def video_5(tmp_path):
    path = tmp_path / "driving.mp4"
    write_video(path, torch.zeros(FRAMES, SIZE, SIZE, 3, dtype=torch.uint8), fps=25)
    return path


def call(pipe, image=None, **inputs):
    return pipe(reference_image() if image is None else image, num_steps=2, progress=False,
                **inputs)


def test_unreadable_or_missing_reference_image(pipe, tmp_path):
    garbage = tmp_path / "face.png"
    garbage.write_bytes(b"\x89PNG but not really")
    with pytest.raises(ValueError, match="image .*face.png.*unreadable"):
        call(pipe, garbage, control_track=driving_track())
    with pytest.raises(FileNotFoundError, match="missing.png"):
        call(pipe, tmp_path / "missing.png", control_track=driving_track())


def test_unreadable_driving_video(pipe, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="driving_video: .*broken.mp4.*unreadable"):
        call(pipe, driving_video=broken, control_track=driving_track())


def test_frame_count_must_be_4k_plus_1_and_within_the_sources(pipe, video_5):
    with pytest.raises(ValueError, match="num_frames must be 4k \\+ 1"):
        call(pipe, control_track=driving_track(9), num_frames=6)
    with pytest.raises(ValueError, match="num_frames=9 exceeds the 5 frames of driving_video"):
        call(pipe, driving_video=video_5, control_track=driving_track(5), num_frames=9)
    with pytest.raises(ValueError, match="not 4k \\+ 1: pass num_frames=5"):
        call(pipe, control_track=driving_track(7))
    request = pipe.check_inputs(reference_image(), mode="camera_only", camera_trajectory="orbit")
    assert request.num_frames == 49  # a preset alone: the default length, not an error


def test_mismatched_source_lengths(pipe, video_5, tmp_path):
    with pytest.raises(ValueError, match="driving_video 5, control_track 9"):
        call(pipe, driving_video=video_5, control_track=driving_track(9))
    save_cameras(make_trajectory("orbit", frames=9, width=SIZE, height=SIZE),
                 tmp_path / "cams.json")
    with pytest.raises(ValueError, match="control_track 5, camera_trajectory 9"):
        call(pipe, mode="driving_with_camera", control_track=driving_track(5),
             camera_trajectory=tmp_path / "cams.json")
    with pytest.raises(ValueError, match="pose_source 5, expression_source 9"):
        call(pipe, mode="mixed", pose_source=driving_track(5), expression_source=driving_track(9),
             camera_trajectory="orbit")


def test_sizes_must_be_multiples_of_16(pipe):
    with pytest.raises(ValueError, match=r"height \(--height\) must be a positive multiple of "
                                         "16, got 40"):
        call(pipe, control_track=driving_track(), height=40, width=32)
    odd = torch.zeros(40, 48, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"reference_image is 48x40 pixels \(width x height\), "
                                         r"and without height/width \(--height/--width\)"):
        call(pipe, odd, control_track=driving_track())


def test_missing_expression_codes_prompt_mode_and_output(pipe, video_5, tmp_path):
    with pytest.raises(ValueError, match="no expression codes.*expression_encoder"):
        call(pipe, driving_video=video_5)
    with pytest.raises(ValueError, match="prompt needs a text encoder"):
        call(pipe, control_track=driving_track(), prompt="a smiling person")
    with pytest.raises(ValueError, match="mode must be one of"):
        call(pipe, mode="dance", control_track=driving_track())
    with pytest.raises(ValueError, match="output_path .*missing.*does not exist"):
        call(pipe, control_track=driving_track(), output_path=tmp_path / "missing" / "o.mp4")
    with pytest.raises(ValueError, match="output_path .*must end in .mp4"):
        call(pipe, control_track=driving_track(), output_path=tmp_path / "o.gif")


def test_bad_trajectories_and_mode_sources(pipe):
    with pytest.raises(ValueError, match="camera_trajectory: unknown trajectory preset 'orbitt'"):
        call(pipe, mode="driving_with_camera", control_track=driving_track(),
             camera_trajectory="orbitt")
    with pytest.raises(ValueError, match="camera_trajectory: .*no parameter"):
        call(pipe, mode="driving_with_camera", control_track=driving_track(),
             camera_trajectory=("orbit", {"spin": 3}))
    with pytest.raises(ValueError, match="'pose_only' keeps the reference camera"):
        call(pipe, mode="pose_only", control_track=driving_track(), camera_trajectory="orbit")
    with pytest.raises(ValueError, match="needs camera_trajectory"):
        call(pipe, mode="camera_only", num_frames=FRAMES)
    with pytest.raises(ValueError, match="'mixed' needs pose_source"):
        call(pipe, mode="mixed", expression_source=driving_track(), camera_trajectory="orbit")
    with pytest.raises(ValueError, match="for mode 'mixed'"):
        call(pipe, mode="driving", control_track=driving_track(), pose_source=driving_track())
    with pytest.raises(ValueError, match="normal_maps are the driving pose"):
        call(pipe, mode="expression_only", control_track=driving_track(),
             normal_maps=torch.zeros(FRAMES, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="reference: expected a 1-frame ControlTrack"):
        call(pipe, control_track=driving_track(), reference=driving_track())


def test_checkpoint_errors_come_before_loading(tmp_path, monkeypatch):
    from factorportrait import FactorPortraitDiT
    from factorportrait.models.vae import VAEConfig, WanVAE

    with pytest.raises(FileNotFoundError, match="does not exist"):
        FactorPortraitPipeline.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        FactorPortraitPipeline.from_pretrained(tmp_path / "empty")
    FactorPortraitDiT(DiTConfig.tiny()).save_pretrained(tmp_path / "ckpt")
    loads = []
    monkeypatch.setattr(FactorPortraitDiT, "from_pretrained", lambda *a, **k: loads.append(a))
    with pytest.raises(WeightsMismatchError, match="preset 'tiny'.*not the requested preset "
                                                   "'wan_1_3b'"):
        FactorPortraitPipeline.from_pretrained(tmp_path / "ckpt", preset="wan_1_3b")
    with pytest.raises(FileNotFoundError, match="no VAE for checkpoint.*vae_path"):
        FactorPortraitPipeline.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="vae_path .*Wan2.1_VAE.pth does not exist"):
        FactorPortraitPipeline.from_pretrained(tmp_path / "ckpt",
                                               vae_path=tmp_path / "Wan2.1_VAE.pth")
    other = FactorPortraitDiT(DiTConfig.tiny(num_layers=3))
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text(
        (tmp_path / "ckpt" / "config.json").read_text())  # says 2 layers, holds 3
    WanVAE(VAEConfig.small(dim=8)).save_pretrained(tmp_path / "other")
    with pytest.raises(WeightsMismatchError, match="unexpected .*blocks.2"):
        FactorPortraitPipeline.from_pretrained(tmp_path / "other")
    assert loads == []  # no weights were read for any of these


def test_text_encoder_paths_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="text encoder weights .*umt5.pth"):
        load_text_encoder(tmp_path / "umt5.pth", tmp_path)
    (tmp_path / "umt5.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="tokenizer folder .*tok"):
        load_text_encoder(tmp_path / "umt5.pth", tmp_path / "tok")


def test_expression_codes_argument_and_track_length(pipe):
    with pytest.raises(ValueError, match="expression_codes must have shape"):
        call(pipe, expression_codes=torch.zeros(FRAMES, 3, 2))
    track = ControlTrack(expression_codes=torch.zeros(FRAMES, 200))
    with pytest.raises(ValueError, match="D <= 128"):
        call(pipe, control_track=track)
