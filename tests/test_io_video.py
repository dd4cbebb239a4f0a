"""Video/image I/O: decord read, ffmpeg write, exactness of the lossless mode, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factorportrait.io import (
    atomic_output,
    read_image,
    read_video,
    resize_frames,
    video_info,
    write_video,
)

FRAMES, HEIGHT, WIDTH = 9, 32, 32


def smooth_frames(frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Gradients that move over time: ``uint8 (F, H, W, 3)`` like natural video content."""
    yy, xx = np.mgrid[0:height, 0:width]
    video = [np.stack([xx * 4 + 5 * i, yy * 4 + i, 128 + 0 * xx + 3 * i], -1)
             for i in range(frames)]
    return np.clip(np.stack(video), 0, 255).astype(np.uint8)


def noise_frames(shape=(FRAMES, HEIGHT, WIDTH, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_lossy_round_trip_keeps_shape_count_fps_and_pixels(tmp_path):
    frames = smooth_frames()
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps=24)
    assert video_info(path) == (FRAMES, 24.0, HEIGHT, WIDTH)
    video = read_video(path)
    assert video.dtype == torch.uint8 and video.shape == (FRAMES, HEIGHT, WIDTH, 3)
    error = (video.int() - torch.from_numpy(frames).int()).abs().float()
    assert error.mean() < 3.0 and error.max() <= 20  # CRF 15 + yuv420p: measured 1.8 / 7


def test_lossless_is_bit_exact_even_for_noise_and_odd_sizes(tmp_path):
    frames = noise_frames((5, 31, 33, 3))  # worst case for a codec; odd size
    path = tmp_path / "exact.mp4"
    write_video(path, torch.from_numpy(frames), fps=30, lossless=True)
    assert video_info(path) == (5, 30.0, 31, 33)
    assert torch.equal(read_video(path), torch.from_numpy(frames))


@pytest.mark.parametrize("width", [16, 48])
def test_widths_decord_cannot_decode_fall_back_to_ffmpeg(tmp_path, width):
    """decord 0.6.0 returns 6 or 4 "channels" for these widths; read_video still is exact."""
    frames = noise_frames((3, 10, width, 3))
    write_video(tmp_path / "narrow.mp4", frames, fps=24, lossless=True)
    assert np.array_equal(read_video(tmp_path / "narrow.mp4").numpy(), frames)
    assert np.array_equal(read_video(tmp_path / "narrow.mp4", [2, 0]).numpy(), frames[[2, 0]])
    assert video_info(tmp_path / "narrow.mp4") == (3, 24.0, 10, width)


def test_fractional_fps_survives(tmp_path):
    path = tmp_path / "ntsc.mp4"
    write_video(path, smooth_frames(3), fps=30000 / 1001)
    assert video_info(path)[1] == pytest.approx(30000 / 1001, abs=1e-6)


def test_streamed_frames_equal_array_write(tmp_path):
    frames = noise_frames()
    write_video(tmp_path / "stream.mp4", (frame for frame in frames), fps=25, lossless=True)
    assert np.array_equal(read_video(tmp_path / "stream.mp4").numpy(), frames)


def test_frame_indices_and_resize(tmp_path):
    frames = noise_frames()
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps=25, lossless=True)
    picked = read_video(path, frame_indices=[8, 0, 3, 3])
    assert np.array_equal(picked.numpy(), frames[[8, 0, 3, 3]])
    small = read_video(path, frame_indices=[8, 0], size=(16, 8))
    assert small.shape == (2, 16, 8, 3)
    assert torch.equal(small, resize_frames(torch.from_numpy(frames[[8, 0]]), (16, 8)))
    assert read_video(path, frame_indices=[]).shape == (0, HEIGHT, WIDTH, 3)
    with pytest.raises(ValueError, match=r"has 9 frames.*\[9, -1\]"):
        read_video(path, frame_indices=[0, 9, -1])


def test_resize_of_a_constant_image_is_constant():
    frames = torch.full((2, 20, 30, 3), 77, dtype=torch.uint8)
    assert torch.equal(resize_frames(frames, (7, 5)), torch.full((2, 7, 5, 3), 77,
                                                                  dtype=torch.uint8))


def test_truncated_and_garbage_videos_are_reported_unreadable(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, smooth_frames(), fps=24)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(ValueError, match="truncated.mp4.*unreadable"):
        read_video(truncated)
    with pytest.raises(ValueError, match="truncated.mp4"):
        video_info(truncated)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 20)
    with pytest.raises(ValueError, match="garbage.mp4.*unreadable"):
        read_video(garbage)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")


@pytest.mark.parametrize("frames, message", [
    (np.zeros((3, 8, 8, 3), np.float32), "uint8"),
    (np.zeros((3, 8, 8), np.uint8), r"\(F, H, W, 3\)"),
    (np.zeros((3, 8, 8, 4), np.uint8), r"\(F, H, W, 3\)"),
    (np.zeros((3, 7, 8, 3), np.uint8), "even height and width"),
    (np.zeros((0, 8, 8, 3), np.uint8), "at least one frame"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 6, 3), np.uint8)], r"frame 1 has shape"),
])
def test_bad_frames_raise_and_leave_nothing(tmp_path, frames, message):
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match=message):
        write_video(path, frames, fps=24)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "a.mp4", smooth_frames(1), fps=0)
    with pytest.raises(ValueError, match=r"\.mp4"):
        write_video(tmp_path / "a.avi", smooth_frames(1), fps=24)
    with pytest.raises(ValueError, match="size"):
        read_video(tmp_path / "a.mp4", size=(16,))


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_write_leaves_no_partial_file(tmp_path, error):
    path = tmp_path / "clip.mp4"
    write_video(path, smooth_frames(), fps=24)
    before = path.read_bytes()

    def frames_then_failure():
        yield from smooth_frames(4)[::-1]
        raise error("producer died")

    with pytest.raises(error, match="producer died"):
        write_video(path, frames_then_failure(), fps=24)
    assert path.read_bytes() == before  # the old video is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary left
    with pytest.raises(error):
        write_video(tmp_path / "new.mp4", frames_then_failure(), fps=24)
    assert not (tmp_path / "new.mp4").exists()


def test_atomic_output_renames_only_on_success(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".bin") and not target.exists()
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done"
    with pytest.raises(OSError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError("disk full")
    assert target.read_bytes() == b"done" and len(list(tmp_path.iterdir())) == 1


def test_read_image_modes_and_errors(tmp_path):
    from PIL import Image

    pixels = noise_frames((1, 6, 4, 3))[0]
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    assert np.array_equal(read_image(tmp_path / "rgb.png").numpy(), pixels)
    rgba = np.concatenate([pixels, np.full((6, 4, 1), 9, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png").numpy(), pixels)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "grey.png")
    grey = read_image(tmp_path / "grey.png")
    assert grey.shape == (6, 4, 3) and torch.equal(grey[..., 2], torch.from_numpy(pixels[..., 0]))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif)
    assert read_image(tmp_path / "phone.jpg").shape == (4, 6, 3)
    data = (tmp_path / "rgb.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.png.*unreadable"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        read_image(tmp_path / "nothing.png")
