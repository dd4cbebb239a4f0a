"""Dataset format: manifest records (read / write / append / repair) and annotation files."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from factorportrait.data import (
    KINDS,
    ClipAnnotations,
    ClipRecord,
    append_manifest,
    load_annotations,
    read_manifest,
    save_annotations,
    write_manifest,
)


def record(clip_id: str = "c0", **overrides) -> ClipRecord:
    fields = dict(id=clip_id, kind="phone", identity="p1", fps=30, video=f"videos/{clip_id}.mp4",
                  annotations=f"annotations/{clip_id}.safetensors")
    return ClipRecord(**{**fields, **overrides})


def annotations(frames: int = 4, **overrides) -> ClipAnnotations:
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[50.0, 0, 16], [0, 50.0, 16], [0, 0, 1]]).repeat(frames, 1, 1)
    fields = dict(K=K, c2w=torch.eye(4).repeat(frames, 1, 1),
                  head_rotation=torch.randn(frames, 3, generator=g),
                  head_translation=torch.randn(frames, 3, generator=g),
                  width=32, height=32, fps=30.0, kind="phone")
    return ClipAnnotations(**{**fields, **overrides})


# -- records ----------------------------------------------------------------------------------
def test_record_json_round_trip_omits_unset_fields():
    full = record(normals="normals/c0.mp4", take="t1", split="heldout", num_frames=9,
                  kind="studio")
    assert ClipRecord.from_json(full.to_json()) == full
    assert set(record().to_json()) == {"id", "kind", "identity", "fps", "video", "annotations"}
    assert record().fps == 30.0 and isinstance(record().fps, float)
    assert record().resolve("/data", "video").as_posix() == "/data/videos/c0.mp4"
    assert record().resolve("/data", "normals") is None


@pytest.mark.parametrize("overrides, message", [
    (dict(kind="selfie"), "unknown kind 'selfie'; valid kinds: phone, studio, viewsweep, "
                          "dynamicsweep"),
    (dict(split="val"), "valid splits: train, heldout"),
    (dict(fps=0), "fps must be a positive number"),
    (dict(num_frames=0), "num_frames must be a positive int"),
    (dict(identity=""), "identity must be a non-empty string"),
    (dict(video="/abs/v.mp4"), "must be relative"),
])
def test_invalid_records_raise(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        record(**overrides)


def test_kinds_are_the_papers_four_datasets():
    assert KINDS == ("phone", "studio", "viewsweep", "dynamicsweep")


# -- manifest ---------------------------------------------------------------------------------
def test_write_then_read_manifest_from_folder_or_file(tmp_path):
    records = [record("a"), record("b", kind="studio", take="t"), record("c", kind="viewsweep")]
    write_manifest(tmp_path / "manifest.jsonl", records)
    assert read_manifest(tmp_path) == records
    assert read_manifest(tmp_path / "manifest.jsonl") == records
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        write_manifest(tmp_path / "other.jsonl", [record("a"), record("a")])
    assert not (tmp_path / "other.jsonl").exists()


@pytest.mark.parametrize("bad_line, message", [
    ('{"id": "x", "kind": "phone"', r"line 2: invalid JSON"),
    ('[1, 2]', r"line 2: expected a JSON object"),
    ('{"id": "x", "kind": "selfie", "identity": "p", "fps": 30, "video": "v.mp4", '
     '"annotations": "a.st"}', r"line 2: clip 'x': unknown kind 'selfie'; valid kinds"),
    ('{"id": "x", "kind": "phone"}', r"line 2: missing field\(s\) \['identity', 'fps', "),
    ('{"id": "x", "kind": "phone", "identity": "p", "fps": 30, "video": "v.mp4", '
     '"annotations": "a.st", "anotations": 1}', r"line 2: unknown field\(s\) \['anotations'\]"),
])
def test_malformed_lines_name_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps(record("a").to_json()) + "\n" + bad_line + "\n\n"
                    + json.dumps(record("b").to_json()) + "\n")
    with pytest.raises(ValueError, match="manifest.jsonl " + message):
        read_manifest(path)


def test_duplicate_ids_name_both_lines(tmp_path):
    path = tmp_path / "manifest.jsonl"
    for clip_id in ("a", "b", "a"):
        append_manifest(path, record(clip_id))
    with pytest.raises(ValueError, match=r"line 3: duplicate id 'a' \(first on line 1\)"):
        read_manifest(path)


def test_append_creates_and_extends(tmp_path):
    path = tmp_path / "manifest.jsonl"
    append_manifest(path, record("a"))
    append_manifest(path, record("b", kind="dynamicsweep"))
    assert [r.id for r in read_manifest(path)] == ["a", "b"]
    assert path.read_bytes().endswith(b"\n")


def test_partial_last_line_is_ignored_on_read_and_removed_on_append(tmp_path):
    path = tmp_path / "manifest.jsonl"
    write_manifest(path, [record("a"), record("b")])
    with open(path, "ab") as handle:  # a writer killed mid-line
        handle.write(json.dumps(record("c").to_json()).encode()[:25])
    with pytest.warns(UserWarning, match="partial last line 3"):
        assert [r.id for r in read_manifest(path)] == ["a", "b"]
    with pytest.warns(UserWarning, match="removing partial last line"):
        append_manifest(path, record("d"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r.id for r in read_manifest(path)] == ["a", "b", "d"]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps(record("a").to_json()))  # hand-written, no final newline
    assert [r.id for r in read_manifest(path)] == ["a"]
    append_manifest(path, record("b"))
    assert [r.id for r in read_manifest(path)] == ["a", "b"]


def test_missing_manifest_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.jsonl"):
        read_manifest(tmp_path)


# -- annotations ------------------------------------------------------------------------------
def test_annotations_round_trip_every_field(tmp_path):
    g = torch.Generator().manual_seed(1)
    original = annotations(
        frames=5, body_pose=torch.randn(5, 63, generator=g),
        expression=torch.randn(5, 2, generator=g), expression_names=("jaw_open", "smile"),
        expression_codes=torch.randn(5, 128, generator=g), betas=torch.randn(10, generator=g),
        mesh={"jaw_pose": torch.randn(5, 3, generator=g),
              "eye_blink": torch.randn(5, generator=g)},
        c2w=torch.eye(4, dtype=torch.float64).repeat(5, 1, 1), kind="dynamicsweep", fps=25.0)
    path = tmp_path / "clip.safetensors"
    save_annotations(path, original)
    loaded = load_annotations(path)
    assert loaded.num_frames == 5
    assert (loaded.width, loaded.height, loaded.fps, loaded.kind, loaded.expression_names) == (
        32, 32, 25.0, "dynamicsweep", ("jaw_open", "smile"))
    assert loaded.tensors().keys() == original.tensors().keys()
    for name, value in original.tensors().items():
        assert loaded.tensors()[name].dtype == value.dtype
        assert torch.equal(loaded.tensors()[name], value), name
    assert path.read_bytes()[8:9] == b"{"  # a safetensors JSON header, no pickle


@pytest.mark.parametrize("overrides, message", [
    (dict(head_rotation=torch.zeros(3, 3)), r"head_rotation must have shape \(F, 3\) with F = 4"),
    (dict(c2w=torch.eye(4).repeat(4, 1, 1)[:, :3]), r"c2w must have shape \(F, 4, 4\)"),
    (dict(K=torch.eye(3).repeat(4, 1, 1).int()), "K must be a floating-point tensor"),
    (dict(head_translation=None), "head_translation is required"),
    (dict(expression_codes=torch.zeros(5, 128)), r"expression_codes must have shape \(F, D\)"),
    (dict(betas=torch.zeros(4, 10)), r"betas must have shape \(D,\)"),
    (dict(mesh={"jaw": torch.zeros(3, 3)}), r"mesh.jaw must have shape \(F, \.\.\.\)"),
    (dict(expression=torch.zeros(4, 2), expression_names=("a",)), "1 expression_names but"),
    (dict(width=0), "width must be a positive int"),
    (dict(kind="selfie"), "unknown kind 'selfie'"),
])
def test_invalid_annotations_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        annotations(**overrides)


def test_corrupt_or_foreign_annotation_files_name_the_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "clip.safetensors"
    save_annotations(path, annotations())
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors is unreadable"):
        load_annotations(tmp_path / "cut.safetensors")
    save_file({"K": torch.eye(3)[None]}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="plain.safetensors: missing or malformed"):
        load_annotations(tmp_path / "plain.safetensors")
    tensors = {**annotations().tensors(), "gaze": torch.zeros(4, 2)}
    from safetensors import safe_open
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(tmp_path / "extra.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match=r"unknown tensor key\(s\) \['gaze'\]"):
        load_annotations(tmp_path / "extra.safetensors")
    with pytest.raises(FileNotFoundError, match="none.safetensors"):
        load_annotations(tmp_path / "none.safetensors")
    with pytest.raises(ValueError, match="expected ClipAnnotations"):
        save_annotations(tmp_path / "x.safetensors", {"K": torch.eye(3)})
    assert not (tmp_path / "x.safetensors").exists()
