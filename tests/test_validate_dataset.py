"""Dataset validator: a clean tiny dataset passes; every seeded problem is reported by clip id."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from factorportrait.data import (
    ClipAnnotations,
    ClipRecord,
    append_manifest,
    save_annotations,
    validate_dataset,
    write_manifest,
)
from factorportrait.data.validate import check_cameras
from factorportrait.io import write_video

FRAMES, SIZE = 5, 16
REPO = Path(__file__).resolve().parents[1]


def rotation_y(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def cameras(frames: int = FRAMES) -> tuple[torch.Tensor, torch.Tensor]:
    """A small orbit: ``K (F,3,3)``, ``c2w (F,4,4)``."""
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]).repeat(frames, 1, 1)
    c2w = torch.eye(4).repeat(frames, 1, 1)
    for i in range(frames):
        c2w[i, :3, :3] = rotation_y(0.1 * i)
        c2w[i, :3, 3] = torch.tensor([0.0, 0.0, -1.0]) @ rotation_y(0.1 * i).T
    return K, c2w


def add_clip(root: Path, clip_id: str, kind: str = "phone", normals: bool = False,
             take: str | None = None, identity: str = "p1") -> ClipRecord:
    """Write a valid clip (video, optional normals, annotations) and append it to the manifest."""
    for folder in ("videos", "normals", "annotations"):
        (root / folder).mkdir(exist_ok=True)
    frames = np.full((FRAMES, SIZE, SIZE, 3), 100, np.uint8)
    write_video(root / f"videos/{clip_id}.mp4", frames, fps=24)
    if normals:
        write_video(root / f"normals/{clip_id}.mp4", frames, fps=24, lossless=True)
    K, c2w = cameras()
    save_annotations(root / f"annotations/{clip_id}.safetensors", ClipAnnotations(
        K=K, c2w=c2w, head_rotation=torch.zeros(FRAMES, 3), head_translation=torch.zeros(
            FRAMES, 3), width=SIZE, height=SIZE, fps=24.0, kind=kind))
    record = ClipRecord(id=clip_id, kind=kind, identity=identity, fps=24,
                        video=f"videos/{clip_id}.mp4", annotations=f"annotations/{clip_id}"
                        ".safetensors", normals=f"normals/{clip_id}.mp4" if normals else None,
                        take=take, num_frames=FRAMES)
    append_manifest(root / "manifest.jsonl", record)
    return record


@pytest.fixture
def dataset(tmp_path) -> Path:
    add_clip(tmp_path, "phone_a")
    add_clip(tmp_path, "studio_a", kind="studio", normals=True, take="take1")
    add_clip(tmp_path, "studio_b", kind="studio", normals=True, take="take1")
    return tmp_path


def load_cli():
    spec = importlib.util.spec_from_file_location("validate_cli",
                                                  REPO / "tools/validate_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def messages(report) -> dict[str | None, list[str]]:
    out: dict[str | None, list[str]] = {}
    for problem in report.problems:
        out.setdefault(problem.clip_id, []).append(problem.message)
    return out


def test_clean_dataset_passes(dataset, capsys):
    report = validate_dataset(dataset, full_decode=True)
    assert report.problems == () and report.ok and report.num_clips == 3
    assert load_cli().main([str(dataset)]) == 0
    assert capsys.readouterr().out.strip() == "3 clips OK"


def test_every_seeded_problem_is_reported_with_its_clip_id(dataset, capsys):
    video = dataset / "videos/phone_a.mp4"  # 1. truncated video
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    write_video(dataset / "normals/studio_a.mp4",  # 2. normals one frame short
                np.zeros((FRAMES - 1, SIZE, SIZE, 3), np.uint8), fps=24, lossless=True)
    (dataset / "annotations/studio_b.safetensors").unlink()  # 3. missing annotations
    K, c2w = cameras()
    K[1, 0, 0] = -20.0  # 4. negative focal length (frame 1)
    c2w[2, :3, :3] = c2w[2, :3, :3] @ torch.diag(torch.tensor([1.0, 1.0, -1.0]))  # 5. det −1
    c2w[3, :3, :3] *= 1.1  # 6. not orthonormal (frame 3)
    c2w[4, 0, 3] = float("nan")  # 7. non-finite (frame 4)
    add_clip(dataset, "bad_cams", kind="viewsweep")
    save_annotations(dataset / "annotations/bad_cams.safetensors", ClipAnnotations(
        K=K, c2w=c2w, head_rotation=torch.zeros(FRAMES, 3), head_translation=torch.zeros(
            FRAMES, 3), width=SIZE, height=SIZE, fps=24.0, kind="viewsweep"))
    add_clip(dataset, "studio_c", kind="studio", take="take1", identity="p2")  # 8. take mix
    with open(dataset / "manifest.jsonl", "a") as handle:
        row = json.loads((dataset / "manifest.jsonl").read_text().splitlines()[0])
        handle.write(json.dumps(row) + "\n")  # 9. duplicate id
        handle.write(json.dumps({**row, "id": "weird", "kind": "selfie"}) + "\n")  # 10. kind
    report = validate_dataset(dataset)
    found = messages(report)
    expected = {
        "phone_a": ["video: video ", "phone_a.mp4 is unreadable (truncated or not a video?)",
                    "duplicate id (manifest lines 1 and 6)"],
        "studio_a": ["frame-count mismatch: manifest num_frames 5, video 5, normals 4, "
                     "annotations 5"],
        "studio_b": ["annotations: missing file"],
        "bad_cams": ["non-positive focal length in 1 of 5 frame(s) (first: frame 1 (-20))",
                     "det ≠ +1 (a reflection) in 1 of 5 frame(s) (first: frame 2 (-1))",
                     "not orthonormal (max |RᵀR − I|) in 1 of 5 frame(s) (first: frame 3",
                     "c2w has non-finite values in 1 of 5 frame(s) (first: frame 4)"],
        "weird": ["manifest line 7: clip 'weird': unknown kind 'selfie'; valid kinds: phone"],
    }
    for clip_id, wanted in expected.items():
        for text in wanted:
            assert any(text in m for m in found.get(clip_id, [])), (clip_id, text, found)
    take_mix = "take 'take1' mixes identities ['p1', 'p2']"
    assert all(take_mix in " ".join(found[c]) for c in ("studio_a", "studio_b", "studio_c"))
    assert "studio_c" in found and len(found) == 6  # nothing reported for no reason
    assert report.summary().startswith(f"{len(report.problems)} problem(s) in 6 of 7 clips")
    assert load_cli().main([str(dataset)]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == report.summary() and printed[:-1] == [str(p) for p in report.problems]
    assert "bad_cams: c2w has non-finite values" in "\n".join(printed)


def test_size_fps_and_kind_mismatches(tmp_path):
    add_clip(tmp_path, "clip")
    write_video(tmp_path / "videos/clip.mp4", np.zeros((FRAMES, 8, 12, 3), np.uint8), fps=30)
    K, c2w = cameras()
    save_annotations(tmp_path / "annotations/clip.safetensors", ClipAnnotations(
        K=K, c2w=c2w, head_rotation=torch.zeros(FRAMES, 3), head_translation=torch.zeros(
            FRAMES, 3), width=SIZE, height=SIZE, fps=24.0, kind="studio"))
    found = messages(validate_dataset(tmp_path))["clip"]
    assert "size mismatch (height, width): video (8, 12), annotations (16, 16)" in found
    assert "fps mismatch: manifest 24.0, video 30.0, annotations 24.0" in found
    assert "kind mismatch: manifest 'phone', annotations 'studio'" in found
    assert len(found) == 3


def test_missing_manifest_and_missing_video(tmp_path):
    report = validate_dataset(tmp_path)
    assert not report.ok and report.problems[0].clip_id is None
    assert "manifest.jsonl does not exist" in report.problems[0].message
    add_clip(tmp_path, "clip")
    (tmp_path / "videos/clip.mp4").unlink()
    assert messages(validate_dataset(tmp_path)) == {
        "clip": [f"video: missing file {tmp_path / 'videos/clip.mp4'}"]}


def test_check_cameras_tolerance_and_bottom_rows():
    K, c2w = cameras(3)
    c2w[1, :3, :3] = c2w[1, :3, :3] * (1 + 2e-5)  # |RᵀR − I| = 4e-5, |det − 1| = 6e-5
    assert check_cameras(K, c2w) == []
    c2w[2, 3, 0] = 0.5
    K[0, 2, 2] = 2.0
    K[2, 1, 0] = 0.25
    assert check_cameras(K, c2w) == [
        "K is not [[fx, s, cx], [0, fy, cy], [0, 0, 1]] in 2 of 3 frame(s) (first: frame 0 (1))",
        "c2w's last row is not [0, 0, 0, 1] in 1 of 3 frame(s) (first: frame 2 (0.5))"]


def test_write_manifest_dataset_validates(tmp_path):
    record = add_clip(tmp_path, "clip")
    write_manifest(tmp_path / "manifest.jsonl", [record])
    assert validate_dataset(tmp_path / "manifest.jsonl").summary() == "1 clips OK"


def test_partial_last_manifest_line_is_a_dataset_problem(tmp_path):
    add_clip(tmp_path, "clip")
    with open(tmp_path / "manifest.jsonl", "a") as handle:
        handle.write('{"id": "half", "ki')
    report = validate_dataset(tmp_path)
    assert report.num_clips == 1 and [p.clip_id for p in report.problems] == [None]
    assert "ignoring partial last line 2" in report.problems[0].message
