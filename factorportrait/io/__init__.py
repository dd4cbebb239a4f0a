"""File I/O: videos (decord read, ffmpeg write) and images; every writer is atomic."""

from factorportrait.io.atomic import atomic_output, atomic_write_bytes
from factorportrait.io.video import (
    DEFAULT_CRF,
    VideoProbe,
    probe_video,
    read_image,
    read_video,
    resize_frames,
    video_info,
    write_video,
)

__all__ = ["DEFAULT_CRF", "VideoProbe", "atomic_output", "probe_video", "atomic_write_bytes", "read_image", "read_video",
           "resize_frames", "video_info", "write_video"]
