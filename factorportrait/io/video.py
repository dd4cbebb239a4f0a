"""Video and image files: read with decord / PIL, write H.264 mp4 with imageio-ffmpeg's ffmpeg.

Frames are ``uint8`` RGB, channels last: a video is ``(F, H, W, 3)``, an image ``(H, W, 3)``.
Readers return ``torch.Tensor``; ``write_video`` takes a tensor, an array, or an iterable of
``(H, W, 3)`` frames (streamed to ffmpeg, so long videos need not fit in memory).

Two encodings (docs/dataset.md "Videos"):

- default: ``libx264``, ``yuv420p``, CRF 15 — small, plays everywhere; even ``H`` and ``W``
  required; lossy (about 1-2 grey levels mean error on smooth content; chroma is subsampled).
- ``lossless=True``: ``libx264rgb`` at ``-qp 0`` in ``rgb24`` — bit-exact through decord, any
  size, several times larger, and not every player (browsers) plays it. Use it where pixels
  must survive exactly (label maps, normal maps that are decoded back to vectors).
  (x264 ``yuv444p -qp 0`` is *not* exact: the RGB↔YUV conversion alone costs up to ±2.)

Two decord 0.6.0 defects are worked around: its own resizing (``VideoReader(width=,
height=)``) returns malformed frames, so ``read_video`` resizes in torch after decoding; and it
cannot decode frames 2, 3, 4, 6, 8, 12, 16, 24, 48 or 72 px wide (row padding is taken for
channels), so such frames — and any other decord failure — are decoded by an ffmpeg pipe
before a video is called unreadable.

Every write is atomic: a temporary ``.tmp.mp4`` next to the target, renamed when ffmpeg has
finished successfully; on any error the temporary file is removed.
"""

from __future__ import annotations

import math
import numbers
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from factorportrait.io.atomic import PathLike, atomic_output

DECODE_CHUNK = 64  # frames decoded per decord call in read_video
DEFAULT_CRF = 15  # x264 constant rate factor for lossy writes (0 = lossless … 51 = worst)

FrameSource = torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray]


def _decord():
    try:
        import decord
    except ImportError as err:  # pragma: no cover - decord is a core dependency
        raise ImportError("reading videos needs decord: pip install decord") from err
    return decord


def _open(path: PathLike):
    """A ``decord.VideoReader`` on ``path``; ``ValueError`` naming the file if it cannot open."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    decord = _decord()
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0))
    except Exception as err:  # decord raises DECORDError / RuntimeError
        raise ValueError(f"video {path} is unreadable (truncated or not a video?): "
                         f"{_first_line(err)}") from err


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    def positive_int(value: object) -> bool:
        return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value > 0

    if not isinstance(size, Sequence) or len(size) != 2 or not all(map(positive_int, size)):
        raise ValueError(f"size must be (height, width) with positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _first_line(err: BaseException) -> str:
    """The first line of an error, without decord's ``[hh:mm:ss] file.cc:NN:`` prefix."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", line)


def video_info(path: PathLike) -> tuple[int, float, int, int]:
    """``(num_frames, fps, height, width)`` of a video, from its container (decodes one frame)."""
    reader = _open(path)
    try:
        height, width, _ = reader[0].shape
    except Exception as err:
        raise ValueError(f"video {path}: cannot decode frame 0: {_first_line(err)}") from err
    return len(reader), float(reader.get_avg_fps()), int(height), int(width)


@dataclass(frozen=True, eq=False)
class VideoProbe:
    """What a video file holds, read from its header and frame timestamps (no full decode).

    ``height`` and ``width`` are those of the decoded frames (a phone's rotation tag is
    applied by the decoder, so a vertical video is ``height > width``); ``timestamps (F,)`` are
    the frames' presentation times in seconds; ``pixel_format`` is ffmpeg's name (``yuv420p``,
    ``rgba``, ``gray``, …) or ``""`` when ffmpeg does not print one.
    """

    path: Path
    num_frames: int
    height: int
    width: int
    timestamps: torch.Tensor
    pixel_format: str

    @property
    def intervals(self) -> torch.Tensor:
        """``(F - 1,)`` seconds between consecutive frames."""
        return self.timestamps.diff()

    @property
    def variable_rate(self) -> bool:
        """True when frame intervals differ by more than 10 % (beyond timestamp rounding)."""
        steps = self.intervals
        if len(steps) < 2:
            return False
        return bool(steps.max() > 1.1 * steps.min() + 1e-3)

    @property
    def fps(self) -> float:
        """The frame rate of the median frame interval (for a constant-rate video: its rate)."""
        steps = self.intervals
        median = float(steps.median()) if len(steps) else 0.0
        return 1.0 / median if median > 0 else 25.0

    @property
    def has_alpha(self) -> bool:
        return bool(re.match(r"^(rgba|bgra|argb|abgr|ya|yuva|gbrap|pal8)", self.pixel_format))

    def constant_rate_indices(self, fps: float | None = None) -> list[int]:
        """Frame indices that play this video at a constant ``fps`` (default :attr:`fps`):
        at each tick ``k / fps`` the frame on screen then (the last one that started)."""
        fps = self.fps if fps is None else fps
        start = float(self.timestamps[0])
        times = self.timestamps.double() - start
        end = float(times[-1]) + float(self.intervals.median() if self.num_frames > 1 else 0)
        ticks = torch.arange(0, max(1, round(end * fps)), dtype=torch.float64) / fps
        shown = torch.searchsorted(times, ticks + 1e-6, right=True) - 1
        return shown.clamp(0, self.num_frames - 1).tolist()


def probe_video(path: PathLike) -> VideoProbe:
    """:class:`VideoProbe` of ``path``; ``FileNotFoundError`` / ``ValueError`` naming the file
    for a missing, empty, unreadable or frameless video."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"video {path} is empty (0 bytes)")
    reader = _open(path)
    count = len(reader)
    if count == 0:
        raise ValueError(f"video {path} has no frames")
    try:
        height, width, _ = reader[0].shape
        stamps = torch.from_numpy(reader.get_frame_timestamp(range(count))[:, 0].copy())
    except Exception as err:
        raise ValueError(f"video {path}: cannot decode it (truncated or corrupt?): "
                         f"{_first_line(err)}") from err
    return VideoProbe(path, count, int(height), int(width), stamps.double(),
                      _pixel_format(path))


def _pixel_format(path: Path) -> str:
    """ffmpeg's pixel format of the first video stream, e.g. ``yuv420p`` (``""`` if unknown)."""
    import imageio_ffmpeg

    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                            capture_output=True, text=True, errors="replace", timeout=60)
    match = re.search(r"Stream #\S+.*?: Video: [^,]+, ([a-z0-9_]+)", result.stderr)
    return match.group(1) if match else ""


def read_video(path: PathLike, frame_indices: Sequence[int] | None = None,
               size: tuple[int, int] | None = None) -> torch.Tensor:
    """Decode frames of a video → ``uint8`` tensor ``(F, H, W, 3)`` RGB.

    ``frame_indices``: which frames, in that order (repeats allowed), each in
    ``[0, num_frames)``; ``None`` reads all. ``size = (H, W)`` resizes after decoding (bilinear
    with antialiasing; the aspect ratio is not preserved). Frames are decoded in chunks of
    ``DECODE_CHUNK`` so resizing a long video does not hold it all at full resolution.
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for an
    unreadable video or out-of-range indices.
    """
    target = None if size is None else _check_size(size)
    reader = _open(path)
    count = len(reader)
    indices = list(range(count)) if frame_indices is None else [int(i) for i in frame_indices]
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise ValueError(f"video {path} has {count} frames (indices 0..{count - 1}); "
                         f"got out-of-range frame indices {bad[:5]}")
    chunks = [_decode(reader, indices[i:i + DECODE_CHUNK], path)
              for i in range(0, len(indices), DECODE_CHUNK)]
    if not chunks:  # no indices: an empty video of the right frame size
        chunks = [_decode(reader, [0], path)[:0]]
    if target is not None:
        chunks = [resize_frames(chunk, target) for chunk in chunks]
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]


def _decode(reader, indices: list[int], path: PathLike) -> torch.Tensor:
    """Frames ``indices`` as a ``uint8 (len(indices), H, W, 3)`` tensor: decord, else ffmpeg
    (the narrow widths decord cannot decode, module docstring)."""
    try:
        frames = reader.get_batch(indices).asnumpy()
        if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
            raise ValueError(f"decord returned {frames.shape}")
    except Exception as err:
        try:
            frames = _decode_with_ffmpeg(path, indices)
        except ValueError:
            raise ValueError(f"video {path}: cannot decode frames (truncated or corrupt?): "
                             f"{_first_line(err)}") from err
    return torch.from_numpy(np.ascontiguousarray(frames))


def _decode_with_ffmpeg(path: PathLike, indices: list[int]) -> np.ndarray:
    """Decode ``path`` sequentially with ffmpeg up to ``max(indices)`` → ``(N, H, W, 3)``."""
    import imageio_ffmpeg

    wanted, kept = set(indices), {}
    stream = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24",
                                        output_params=["-fps_mode", "passthrough"])
    try:
        width, height = next(stream)["size"]
        for index, buffer in enumerate(stream):
            if index in wanted:
                kept[index] = np.frombuffer(buffer, np.uint8).reshape(height, width, 3)
            if index >= max(indices):
                break
    except Exception as err:  # IOError / RuntimeError from the ffmpeg process
        raise ValueError(f"video {path}: ffmpeg cannot decode it: {_first_line(err)}") from err
    finally:
        stream.close()  # stops ffmpeg
    if len(kept) != len(wanted):
        raise ValueError(f"video {path}: ffmpeg decoded only {len(kept)} of the requested "
                         "frames")
    return np.stack([kept[i] for i in indices])


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``uint8 (F, H, W, 3)`` frames to ``size = (H', W')``: bilinear, antialiased."""
    height, width = _check_size(size)
    if tuple(frames.shape[1:3]) == (height, width):
        return frames
    x = frames.permute(0, 3, 1, 2).float()  # (F, 3, H, W)
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear",
                                        antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def read_image(path: PathLike) -> torch.Tensor:
    """Read an image file → ``uint8`` tensor ``(H, W, 3)`` RGB.

    EXIF orientation is applied (phone photos); grey, palette and RGBA images are converted to
    RGB (alpha is dropped); 16-bit grey images are rescaled to 8 bits. Raises
    ``FileNotFoundError`` / ``ValueError`` naming the file (a folder is named as one).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"image {path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in WIDE_MODES:  # 16-bit / 32-bit grey: rescale, do not clip
                return _wide_grey_to_rgb(np.array(image), image.mode, path)
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"image {path} is unreadable (truncated or not an image?): "
                         f"{_first_line(err)}") from err
    return torch.from_numpy(np.array(rgb, dtype=np.uint8))


WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # PIL's high-bit-depth single-channel modes


def _wide_grey_to_rgb(array: np.ndarray, mode: str, path: Path) -> torch.Tensor:
    """A 16-bit (or 32-bit integer / float) grey image -> ``uint8 (H, W, 3)``: 16-bit values
    scaled by 255/65535 (PIL's own ``convert("RGB")`` clips them to 0/255); float images must
    lie in [0, 1]."""
    values = array.astype(np.float64)
    if mode == "F":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError(f"image {path} is a float image with values outside [0, 1]")
        scaled = values * 255
    else:
        top = 65535.0 if values.max() <= 65535 else float(values.max())
        scaled = values * (255.0 / top)
    grey = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    return torch.from_numpy(np.repeat(grey[..., None], 3, axis=2))


# -- writing ----------------------------------------------------------------------------------
def _as_frame(frame: object, index: int, shape: tuple[int, ...] | None, name: str) -> np.ndarray:
    """One frame as a C-contiguous ``uint8 (H, W, 3)`` array, checked against ``shape``."""
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"{name}: frame {index} must be a tensor or array, "
                         f"got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"{name}: frames must be uint8 (0..255), got {frame.dtype} at frame "
                         f"{index}")
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"{name}: frames must be (H, W, 3) RGB, got {tuple(frame.shape)} at "
                         f"frame {index}")
    if shape is not None and frame.shape != shape:
        raise ValueError(f"{name}: frame {index} has shape {tuple(frame.shape)}, frame 0 has "
                         f"{shape}")
    return np.ascontiguousarray(frame)


def _iter_frames(frames: FrameSource, name: str) -> Iterable[object]:
    if isinstance(frames, (torch.Tensor, np.ndarray)):
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"{name}: frames must be (F, H, W, 3) uint8 RGB, got shape "
                             f"{tuple(frames.shape)}")
    return frames


def _ffmpeg_command(path: Path, height: int, width: int, fps: float, lossless: bool,
                    crf: int) -> list[str]:
    import imageio_ffmpeg

    rate = Fraction(float(fps)).limit_denominator(1_000_000)
    if lossless:  # exact RGB: no colour conversion, no chroma subsampling, quantiser 0
        codec = ["-c:v", "libx264rgb", "-qp", "0", "-pix_fmt", "rgb24"]
    else:
        codec = ["-c:v", "libx264", "-crf", str(crf), "-pix_fmt", "yuv420p"]
    return [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo",
            "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(rate), "-i", "-", "-an",
            *codec, "-movflags", "+faststart", str(path)]


def _check_write_args(path: Path, fps: float, crf: int) -> None:
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"write_video: {path} must end in .mp4")
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not (
            math.isfinite(fps) and fps > 0):
        raise ValueError(f"write_video {path}: fps must be a positive number, got {fps!r}")
    if not (isinstance(crf, int) and 0 <= crf <= 51):
        raise ValueError(f"write_video {path}: crf must be an int in 0..51, got {crf!r}")


def write_video(path: PathLike, frames: FrameSource, fps: float, lossless: bool = False,
                crf: int = DEFAULT_CRF) -> None:
    """Encode ``uint8`` RGB frames ``(F, H, W, 3)`` (or an iterable of ``(H, W, 3)``) to mp4.

    Lossy (default): H.264 ``yuv420p`` at ``crf``; ``H`` and ``W`` must be even. Lossless:
    exact RGB (``libx264rgb -qp 0``), any size. Atomic: ``path`` appears only when the whole
    video is encoded; bad frames (dtype, shape) raise ``ValueError`` naming ``path`` and leave
    nothing behind, as does any exception or interrupt while frames are produced.
    """
    path = Path(path)
    _check_write_args(path, fps, crf)
    name = f"write_video {path}"
    source = iter(_iter_frames(frames, name))
    first = next(source, None)
    if first is None:
        raise ValueError(f"{name}: need at least one frame, got 0")
    first = _as_frame(first, 0, None, name)
    height, width = first.shape[:2]
    if not lossless and (height % 2 or width % 2):
        raise ValueError(f"{name}: yuv420p needs even height and width, got {height}x{width} "
                         "(crop/pad the frames, or pass lossless=True)")
    with atomic_output(path) as tmp:
        command = _ffmpeg_command(tmp, height, width, fps, lossless, crf)
        _run_ffmpeg(command, first, source, name)


def _run_ffmpeg(command: list[str], first: np.ndarray, rest: Iterable[object],
                name: str) -> None:
    """Stream frames into ffmpeg's stdin; raise with ffmpeg's stderr if it fails."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=log)
        try:
            process.stdin.write(first.data)
            for index, frame in enumerate(rest, start=1):
                process.stdin.write(_as_frame(frame, index, first.shape, name).data)
            process.stdin.close()
            code = process.wait()
        except BrokenPipeError:  # ffmpeg exited early: its log says why
            code = process.wait() or -1
        except BaseException:  # bad frame, generator error, KeyboardInterrupt: stop ffmpeg now
            process.kill()
            process.wait()
            raise
        finally:
            if process.stdin and not process.stdin.closed:
                _close_quietly(process.stdin)
        if code != 0:
            log.seek(0)
            message = log.read().decode("utf-8", "replace").strip()[-2000:]
            raise RuntimeError(f"{name}: ffmpeg failed (exit {code}): {message}")


def _close_quietly(stream) -> None:
    try:
        stream.close()
    except OSError:
        pass


__all__ = ["DEFAULT_CRF", "VideoProbe", "probe_video", "read_image", "read_video",
           "resize_frames", "video_info", "write_video"]
