"""Expression code sources: our encoder, files, user modules -> (B, T, 128) (issue 8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from factorportrait.expression.codes import (
    EncoderCodeSource,
    ExpressionCodeSource,
    ModuleCodeSource,
    batch_codes,
    check_codes,
    codes_from_file,
    encode_video,
)
from factorportrait.models.expression_encoder import ExpressionEncoder, ExpressionEncoderConfig


@pytest.fixture(scope="module")
def encoder() -> ExpressionEncoder:
    torch.manual_seed(0)
    return ExpressionEncoder(ExpressionEncoderConfig.tiny()).eval()


def test_check_codes_pads_and_rejects_bad_codes():
    assert torch.equal(check_codes(torch.ones(5, 128), "x"), torch.ones(5, 128))
    padded = check_codes(torch.ones(5, 64, dtype=torch.float64), "x")
    assert padded.shape == (5, 128) and padded.dtype == torch.float32
    assert padded[:, 64:].abs().sum() == 0
    bad = [(torch.ones(5), r"shape \(N, D\).*got \(5,\)"),
           (torch.ones(2, 5, 128), r"got \(2, 5, 128\)"),
           (torch.ones(5, 129), r"1 <= D <= 128, got \(5, 129\)"),
           (torch.ones(5, 0), "got \\(5, 0\\)"),
           (torch.ones(5, 128, dtype=torch.long), "floating-point"),
           ([[0.0] * 128], "expected a tensor")]
    for codes, message in bad:
        with pytest.raises(ValueError, match=f"expression codes from my source: .*{message}"):
            check_codes(codes, "my source")
    with pytest.raises(ValueError, match="expected 4 frames .* got 5"):
        check_codes(torch.ones(5, 128), "x", frames=4)
    nan = torch.ones(5, 128)
    nan[3, 7] = float("nan")
    with pytest.raises(ValueError, match="non-finite values .*first at frame 3"):
        check_codes(nan, "x")


def test_codes_from_files(tmp_path):
    codes = torch.randn(9, 128)
    np.save(tmp_path / "codes.npy", codes.numpy())
    save_file({"expression_codes": codes}, str(tmp_path / "codes.safetensors"))
    torch.save(codes, tmp_path / "codes.pt")
    for name in ("codes.npy", "codes.safetensors", "codes.pt"):
        assert torch.equal(codes_from_file(tmp_path / name, frames=9), codes)
    np.save(tmp_path / "short.npy", np.ones((9, 16), np.float32))
    assert codes_from_file(tmp_path / "short.npy").shape == (9, 128)


@pytest.mark.parametrize("content, message", [
    (np.ones((9, 200), np.float32), r"1 <= D <= 128, got \(9, 200\)"),
    (np.ones((2, 9, 128), np.float32), r"got \(2, 9, 128\)"),
    (np.full((9, 128), np.inf, np.float32), "non-finite values"),
    (np.array([{"a": 1}], dtype=object), "allow_pickle|Object arrays"),
])
def test_bad_code_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "codes.npy"
    np.save(path, content, allow_pickle=True)
    with pytest.raises(ValueError, match=message) as error:
        codes_from_file(path)
    assert str(path) in str(error.value)


def test_bad_code_file_types_are_rejected(tmp_path):
    torch.save({"codes": torch.ones(9, 128)}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="expected a tensor .*got dict"):
        codes_from_file(tmp_path / "dict.pt")
    save_file({"a": torch.ones(9, 128), "b": torch.ones(9, 128)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match="'expression_codes'"):
        codes_from_file(tmp_path / "two.safetensors")
    (tmp_path / "codes.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        codes_from_file(tmp_path / "codes.txt")
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="broken.npy"):
        codes_from_file(tmp_path / "broken.npy")
    with pytest.raises(FileNotFoundError):
        codes_from_file(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="expected 4 frames"):
        np.save(tmp_path / "nine.npy", np.ones((9, 128), np.float32))
        codes_from_file(tmp_path / "nine.npy", frames=4)


def test_encoder_source_crops_whole_frames(encoder):
    source = EncoderCodeSource(encoder)
    assert isinstance(source, ExpressionCodeSource)
    frames = torch.rand(5, 3, 48, 80) * 2 - 1
    codes = source(frames)
    assert codes.shape == (5, 128) and torch.isfinite(codes).all()
    # the default box is the centred square; giving it explicitly changes nothing
    box = torch.tensor([[16.0, 0.0, 64.0, 48.0]]).expand(5, 4)
    assert torch.allclose(source(frames, box), codes, atol=1e-6)
    # frames that are already crops at the encoder's size go straight in
    crops = torch.rand(3, 3, 32, 32) * 2 - 1
    assert torch.allclose(source(crops), encoder(crops), atol=1e-6)
    with pytest.raises(ValueError, match="one per frame"):
        source(frames, box[:2])
    with pytest.raises(ValueError, match=r"EncoderCodeSource: expected frames \(N, 3, H, W\)"):
        source(torch.zeros(5, 48, 80))


def test_module_source_checks_what_a_user_module_returns():
    class Good(torch.nn.Module):
        def forward(self, images):
            return images.mean(dim=(2, 3)).repeat(1, 20)  # (N, 60)

    class Wrong(torch.nn.Module):
        def forward(self, images):
            return images.flatten(1)[:, :300]

    frames = torch.rand(4, 3, 40, 40)
    assert ModuleCodeSource(Good())(frames).shape == (4, 128)
    assert ModuleCodeSource(Good(), input_size=24)(frames).shape == (4, 128)
    with pytest.raises(ValueError, match=r"expression codes from Wrong: .*got \(4, 300\)"):
        ModuleCodeSource(Wrong())(frames)
    with pytest.raises(ValueError, match="expression codes from mine: expected 4 frames"):
        ModuleCodeSource(lambda images: torch.zeros(3, 128), name="mine")(frames)
    with pytest.raises(ValueError, match="no input_size"):
        ModuleCodeSource(Good())(frames, torch.tensor([[0.0, 0, 10, 10]]).expand(4, 4))


def test_all_sources_give_the_pipeline_shape(encoder, tmp_path):
    video = torch.rand(2, 3, 5, 32, 48) * 2 - 1  # (B, 3, T, H, W)
    codes = encode_video(EncoderCodeSource(encoder), video)
    assert codes.shape == (2, 5, 128)
    # each batch element is its own clip
    alone = EncoderCodeSource(encoder)(video[1].transpose(0, 1))
    assert torch.allclose(codes[1], alone, atol=1e-6)
    boxes = torch.tensor([8.0, 0.0, 40.0, 32.0]).expand(2, 5, 4)
    assert encode_video(EncoderCodeSource(encoder), video, boxes).shape == (2, 5, 128)
    with pytest.raises(ValueError, match=r"boxes \(2, 5, 4\)"):
        encode_video(EncoderCodeSource(encoder), video, boxes[:, :3])
    with pytest.raises(ValueError, match=r"video \(B, 3, T, H, W\)"):
        encode_video(EncoderCodeSource(encoder), video[0])
    np.save(tmp_path / "track.npy", np.ones((5, 128), np.float32))
    track = batch_codes(codes_from_file(tmp_path / "track.npy"), batch=2)
    assert track.shape == (2, 5, 128)
    assert batch_codes(torch.ones(1, 5, 64), batch=3).shape == (3, 5, 128)
    with pytest.raises(ValueError, match="batch 2 does not match 3"):
        batch_codes(torch.ones(2, 5, 128), batch=3)


def test_encoder_source_fits_the_pipeline_encoder_protocol(encoder):
    from factorportrait.inference.encoders import encode_expressions

    frames = torch.randint(0, 256, (6, 48, 48, 3), dtype=torch.uint8)  # read_video's layout
    codes = encode_expressions(EncoderCodeSource(encoder), frames)
    assert codes.shape == (6, 128)
