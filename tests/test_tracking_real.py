"""Face tracking on real photos (MediaPipe 0.10.14, offline): ``skimage.data.astronaut()``
moved by known transforms and written as mp4 recovers them; a cat is refused by name; still
photos do not jitter; gaps, second faces and bad videos are handled in one line each."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from factorportrait.geometry.rotations import matrix_to_axis_angle, \
    rotation_angle
from factorportrait.io import read_video, write_video
from factorportrait.tracking import FaceTracker, NoFaceError, Smoothing, TrackerConfig, \
    load_video, track_video
from tests.real_faces import astronaut, chelsea, moved_photo, write_clip

ROOT = Path(__file__).resolve().parents[1]
ANGLES = [0, 5, 10, 20, -10, -20, 0, 0, 0]  # degrees, counter-clockwise on screen
ZOOMS = [1, 1, 1, 1, 1, 1, 1.1, 1.2, 0.9]


@pytest.fixture(scope="module")
def tracker():
    with FaceTracker() as shared:
        yield shared


@pytest.fixture(scope="module")
def raw_tracker():
    with FaceTracker(TrackerConfig(smoothing=Smoothing.off())) as shared:
        yield shared


def check_turns_and_zooms(track, frames, angles, zooms):
    rotation = track.pose.rotation
    depth = track.head_translation[:, 2]
    base = frames[0]
    for index, angle, zoom in zip(frames, angles, zooms):
        relative = matrix_to_axis_angle(rotation[index] @ rotation[base].T)
        roll = -math.degrees(float(relative[2]))  # counter-clockwise = about -z
        off_axis = math.degrees(float(relative[:2].norm()))
        assert abs(roll - angle) < 2.5 and off_axis < 2.5, (index, roll, angle, off_axis)
        ratio = float(depth[index] / depth[base])
        assert abs(ratio * zoom - 1) < 0.04, (index, ratio, 1 / zoom)


def test_known_turns_and_zooms_of_a_real_photo_are_recovered(tmp_path, raw_tracker):
    path = write_clip(tmp_path / "moved.mp4", moved_photo(astronaut(), ANGLES, ZOOMS))
    track, face, _ = track_video(path, raw_tracker)
    assert track.world == "camera" and track.num_frames == len(ANGLES)
    check_turns_and_zooms(face, range(len(ANGLES)), ANGLES, ZOOMS)
    assert torch.equal(track.cameras.c2w, torch.eye(4).expand(len(ANGLES), 4, 4))


def test_smoothed_track_of_held_poses_keeps_them(tmp_path, tracker):
    hold = 12  # half a second per pose: the filters do not eat a held turn
    angles = [a for a in (0, 20, -15) for _ in range(hold)]
    zooms = [z for z in (1.0, 1.0, 1.2) for _ in range(hold)]
    path = write_clip(tmp_path / "held.mp4", moved_photo(astronaut(), angles, zooms, size=256))
    _, face, _ = track_video(path, tracker)
    middles = [hold // 2, hold + hold // 2, 2 * hold + hold // 2]
    check_turns_and_zooms(face, middles, [0, 20, -15], [1.0, 1.0, 1.2])


def test_a_still_photo_with_sub_pixel_noise_gives_a_still_crop_box(tmp_path, tracker):
    g = torch.Generator().manual_seed(0)
    shifts = torch.rand(25, 2, generator=g) - 0.5
    frames = moved_photo(astronaut(), [0] * 25, [1.0] * 25, shifts=shifts)
    frames = (frames.short() + torch.randint(-2, 3, frames.shape, generator=g)).clamp(0, 255)
    path = write_clip(tmp_path / "still.mp4", frames.byte())
    _, face, _ = track_video(path, tracker)
    corners = face.boxes.xyxy()
    steps = (corners[1:] - corners[:-1]).abs().max()
    assert float(steps) < 0.5, float(steps)
    raw = FaceTracker(TrackerConfig(smoothing=Smoothing.off()))
    with raw:
        _, unsmoothed, _ = track_video(path, raw)
    assert float((unsmoothed.boxes.xyxy()[1:] - unsmoothed.boxes.xyxy()[:-1]).abs().max()) \
        > float(steps)  # the filter is what keeps it still


def test_a_cat_is_refused_by_name(tmp_path, tracker):
    cat = chelsea()[:, :448]  # even sides for H.264
    path = write_clip(tmp_path / "chelsea.mp4", cat[None].expand(5, -1, -1, -1).contiguous())
    with pytest.raises(NoFaceError, match=r"chelsea\.mp4: no face found in any of its 5 frames"):
        track_video(path, tracker)
    out = tmp_path / "cat.safetensors"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "track.py"), str(path),
                             "--out", str(out), "--no-progress"], capture_output=True,
                            text=True, cwd=ROOT)
    lines = [line for line in result.stderr.splitlines() if line.startswith("track.py")]
    assert result.returncode == 2 and len(lines) == 1 and "no face" in lines[0]
    assert not out.exists()


def test_frames_without_a_face_are_filled_and_reported(tmp_path, raw_tracker):
    frames = moved_photo(astronaut(), [0, 4, 8, 12, 16, 20], [1.0] * 6, size=256)
    frames[2:4] = 128  # two grey frames: no face
    _, face, _ = track_video(write_clip(tmp_path / "gap.mp4", frames), raw_tracker)
    assert face.report.filled == (2, 3) and not bool(face.detected[2])
    assert "2 frames without a face interpolated (2, 3)" in face.report.summary()
    nose = face.landmarks[:, 1, :2]
    assert torch.allclose(nose[2], nose[1] + (nose[4] - nose[1]) / 3, atol=1e-3)


def test_the_largest_face_is_tracked_and_the_others_reported(tmp_path, raw_tracker):
    photo = astronaut()
    small = torch.nn.functional.interpolate(photo.permute(2, 0, 1)[None].float(), size=(400, 400),
                                            mode="bilinear", antialias=True)[0]
    canvas = torch.cat([photo.permute(2, 0, 1).float(),
                        torch.cat([small, torch.full((3, 112, 400), 255.0)], 1)], 2)
    frames = canvas.round().byte().permute(1, 2, 0)[None].expand(3, -1, -1, -1).contiguous()
    _, face, _ = track_video(write_clip(tmp_path / "two.mp4", frames), raw_tracker)
    assert face.report.most_faces == 2 and face.report.frames_with_other_faces == 3
    assert float(face.boxes.center[0, 0]) < 512  # the big astronaut, on the left
    assert "other faces" in face.report.summary()


def test_a_face_below_the_minimum_size_is_refused(tmp_path):
    path = write_clip(tmp_path / "small.mp4", moved_photo(astronaut(), [0, 0], [1, 1],
                                                          size=256))
    with FaceTracker(TrackerConfig(min_face_px=150)) as strict, \
            pytest.raises(ValueError, match=r"small\.mp4: the face is too small \(\d+ px"):
        track_video(path, strict)


def test_avatar_renders_at_known_poses(tracker):
    """Absolute accuracy on our procedural avatars, whose stylised faces MediaPipe meets
    without training: about 5° (docs/tracking.md has the 144-render figures)."""
    from factorportrait.body import AvatarIdentity, HeadAvatar
    from factorportrait.data.synthetic.performance import _euler_to_axis_angle
    from factorportrait.geometry.trajectories import static
    from factorportrait.render import Meshes, render

    avatar = HeadAvatar(AvatarIdentity.sample(seed=201))
    poses = [(0, 0, 0), (20, 0, 0), (-20, 0, 0), (0, 0, 15), (15, 8, -8)]
    angles = torch.tensor([[math.radians(v) for v in pose] for pose in poses])
    axis_angle = _euler_to_axis_angle(angles)
    camera = static(1, width=384, height=384, distance=0.5, fov_deg=30.0)
    verts = avatar.pose(torch.zeros(len(poses), 8), axis_angle, torch.zeros(len(poses), 3))
    rgb = render(Meshes(verts, avatar.faces, avatar.vertex_colors),
                 (camera.K.expand(len(poses), 3, 3), camera.c2w.expand(len(poses), 4, 4)),
                 384, 384, outputs=("rgb",), supersample=2)["rgb"]
    frames = (rgb.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte()
    raw = FaceTracker(TrackerConfig(smoothing=Smoothing.off()))
    with raw:
        face = raw.track(frames, K=camera.K[0])
    truth, centre = avatar.head_transform(axis_angle, torch.zeros(len(poses), 3))
    errors = torch.rad2deg(rotation_angle(face.pose.rotation @ truth.double().transpose(1, 2)))
    assert float(errors.max()) < 10.0, errors
    yaw = torch.rad2deg(rotation_angle((face.pose.rotation[1] @ face.pose.rotation[0].T)))
    assert abs(float(yaw) - 20.0) < 4.0
    camera_centre = centre.double() + torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    assert float((face.head_translation.double() - camera_centre).norm(dim=1).max()) < 0.05


def _ffmpeg(*args: str) -> None:
    import imageio_ffmpeg
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def base_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return write_clip(folder / "base.mp4", moved_photo(astronaut(), [0, 3, 6, 9, 12, 15],
                                                       [1.0] * 6, size=256))


def test_grayscale_and_alpha_videos_are_refused_in_one_line(base_clip, tmp_path):
    _ffmpeg("-i", str(base_clip), "-vf", "hue=s=0", "-pix_fmt", "yuv420p", str(tmp_path / "g.mp4"))
    with pytest.raises(ValueError, match=r"g\.mp4 is grayscale"):
        load_video(tmp_path / "g.mp4")
    _ffmpeg("-i", str(base_clip), "-c:v", "png", "-pix_fmt", "rgba", str(tmp_path / "a.mp4"))
    with pytest.raises(ValueError, match=r"a\.mp4 has an alpha channel \(pixel format rgba\)"):
        load_video(tmp_path / "a.mp4")


def test_empty_and_corrupt_videos_are_refused_in_one_line(base_clip, tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.mp4 is empty \(0 bytes\)"):
        load_video(tmp_path / "empty.mp4")
    (tmp_path / "cut.mp4").write_bytes(base_clip.read_bytes()[:600])
    with pytest.raises(ValueError, match=r"cut\.mp4"):
        load_video(tmp_path / "cut.mp4")
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_video(tmp_path / "missing.mp4")


def test_a_variable_frame_rate_video_is_resampled_to_a_constant_rate(base_clip, tmp_path):
    # frames 0-2 every 40 ms, then every 120 ms: a phone that dropped its rate
    _ffmpeg("-i", str(base_clip), "-vf", "setpts='if(lt(N,3),N,3+(N-3)*3)/25/TB'",
            "-fps_mode", "vfr", str(tmp_path / "vfr.mp4"))
    loaded = load_video(tmp_path / "vfr.mp4")
    assert loaded.resampled and loaded.fps == pytest.approx(25.0)
    # ticks every 40 ms: frames 0, 1, 2, then 3 and 4 held for three ticks, then 5
    assert loaded.frames.shape[0] == 10 and loaded.source_frames == 6
    frames = loaded.frames.short()
    assert (frames[3] - frames[5]).abs().max() == 0 and (frames[5] - frames[6]).abs().max() > 0
    assert "variable frame rate: resampled to 25.00 fps" in loaded.note()


def test_a_vertical_phone_video_with_a_rotation_tag_is_tracked_upright(base_clip, tmp_path,
                                                                      raw_tracker):
    frames = read_video(base_clip)[:, :, 32:224]  # 256 x 192: vertical
    write_video(tmp_path / "tall.mp4", frames.rot90(-1, (1, 2)).contiguous(), fps=25)
    _ffmpeg("-display_rotation", "90", "-i", str(tmp_path / "tall.mp4"), "-c", "copy",
            str(tmp_path / "tagged.mp4"))  # stored sideways, tagged to be shown upright
    loaded = load_video(tmp_path / "tagged.mp4")
    assert loaded.frames.shape[1:3] == (256, 192)
    _, face, _ = track_video(tmp_path / "tagged.mp4", raw_tracker)
    assert abs(math.degrees(float(face.boxes.roll[0]))) < 10  # upright, not 90° off
