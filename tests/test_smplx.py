"""SMPL-X through the real smplx code path on a generated model archive; file checks and the
no-unpickling rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from factorportrait.body.smplx_model import SMPLXBody, inspect_npz, write_synthetic_smplx_model
from factorportrait.body.smplx_synthetic import HEAD_JOINT, rest_joints
from factorportrait.render import Meshes, render

FLIP = torch.tensor([1.0, -1.0, -1.0])  # SMPL-X frame -> OpenCV world
UNPICKLED: list[str] = []


def _trap() -> str:
    UNPICKLED.append("unpickled")
    return "trap"


class Trap:
    """Unpickling this object records it in ``UNPICKLED``."""

    def __reduce__(self):
        return (_trap, ())


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_synthetic_smplx_model(tmp_path_factory.mktemp("smplx"), seed=0)


@pytest.fixture(scope="module")
def body(model_file) -> SMPLXBody:
    return SMPLXBody(model_file.parent)  # a folder holding SMPLX_NEUTRAL.npz


@pytest.fixture(scope="module")
def model_arrays(model_file) -> dict[str, np.ndarray]:
    with np.load(model_file, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _rest(body: SMPLXBody, frames: int = 1, **params) -> dict[str, torch.Tensor]:
    base = {"global_orient": torch.zeros(frames, 3), "body_pose": torch.zeros(frames, 63)}
    return {**base, **params}


def test_generated_model_loads_through_smplx_and_rests_at_the_template(body, model_arrays):
    assert body.num_vertices == 10475 and body.faces.shape == model_arrays["f"].shape
    out = body(**_rest(body, 2))
    template = torch.from_numpy(model_arrays["v_template"]).float()
    assert out.vertices.shape == (2, 10475, 3)
    assert torch.allclose(out.vertices, (template * FLIP).expand(2, -1, -1), atol=1e-6)
    joints = torch.from_numpy(rest_joints()).float()
    assert torch.allclose(out.joints[0, :55], joints * FLIP, atol=1e-5)  # exact regressor


def test_global_orient_rotates_about_the_pelvis_and_transl_translates(body, model_arrays):
    angle = math.pi / 2
    transl = torch.tensor([[0.1, 0.2, -0.3]])
    out = body(**_rest(body, global_orient=torch.tensor([[0.0, angle, 0.0]]), transl=transl))
    template = torch.from_numpy(model_arrays["v_template"]).float()
    pelvis = torch.from_numpy(rest_joints()[0]).float()
    rotation = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # y, 90 deg
    expected = (template - pelvis) @ rotation.T + pelvis + transl
    assert torch.allclose(out.vertices[0], expected * FLIP, atol=1e-5)


def test_jaw_expression_and_betas_act_where_expected(body, model_arrays):
    owner = np.argmax(model_arrays["weights"], axis=1)
    jaw = torch.from_numpy(owner == 22)
    head = torch.from_numpy(owner == HEAD_JOINT)
    rest = body(**_rest(body)).vertices[0]
    opened = body(**_rest(body, jaw_pose=torch.tensor([[0.4, 0.0, 0.0]]))).vertices[0]
    moved = (opened - rest).norm(dim=-1) > 1e-6
    assert moved.any() and torch.equal(moved, jaw & moved)
    g = torch.Generator().manual_seed(0)
    smiling = body(**_rest(body, expression=torch.randn(1, 10, generator=g))).vertices[0]
    moved = (smiling - rest).norm(dim=-1) > 1e-6
    assert moved.any() and torch.all(head[moved])
    frames = body(**_rest(body, 3, betas=torch.tensor([[2.0] + [0.0] * 9]))).vertices
    assert torch.allclose(frames[0], frames[2], atol=1e-6)  # (1, num_betas) betas broadcast
    assert (frames[0] - rest).norm(dim=-1).max() > 0.01


def test_posed_body_renders(body):
    out = body(**_rest(body, 2, body_pose=0.3 * torch.randn(
        2, 63, generator=torch.Generator().manual_seed(1))))
    K = torch.tensor([[60.0, 0.0, 32.0], [0.0, 60.0, 32.0], [0.0, 0.0, 1.0]])
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.0, 0.3, -3.0])  # in front of the body (it faces -z)
    maps = render(Meshes(out.vertices, body.faces), (K, c2w), 64, 64, outputs=("mask",))
    assert maps["mask"][0].sum() > 50 and not torch.equal(maps["mask"][0], maps["mask"][1])


def test_generator_is_deterministic_and_checks_vertex_count(tmp_path, model_file):
    again = write_synthetic_smplx_model(tmp_path / "SMPLX_NEUTRAL.npz", seed=0)
    with np.load(model_file) as a, np.load(again) as b:
        assert all(np.array_equal(a[name], b[name]) for name in a.files)
    with pytest.raises(ValueError, match="num_vertices"):
        write_synthetic_smplx_model(tmp_path / "small.npz", num_vertices=500)


def test_missing_pkl_and_malformed_files_give_actionable_errors(tmp_path, model_arrays):
    with pytest.raises(FileNotFoundError, match=r"SMPLX_NEUTRAL\.npz.*smpl-x\.is\.tue\.mpg\.de"):
        SMPLXBody(tmp_path)
    (tmp_path / "SMPLX_FEMALE.pkl").write_bytes(b"not read")
    with pytest.raises(ValueError, match="never unpickles"):
        SMPLXBody(tmp_path, gender="female")
    broken = dict(model_arrays)
    del broken["J_regressor"]
    np.savez(tmp_path / "SMPLX_MALE.npz", **broken)
    with pytest.raises(ValueError, match="J_regressor"):
        SMPLXBody(tmp_path, gender="male")
    wrong = dict(model_arrays, weights=model_arrays["weights"][:, :24])
    np.savez(tmp_path / "wrong.npz", **wrong)
    with pytest.raises(ValueError, match="55 joints"):
        SMPLXBody(tmp_path / "wrong.npz")
    (tmp_path / "garbage.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable .npz"):
        SMPLXBody(tmp_path / "garbage.npz")


def test_object_arrays_are_never_unpickled(tmp_path, model_arrays):
    trap = np.empty(1, dtype=object)
    trap[0] = Trap()
    # like the official archive's pickled `joint2num`: extra object arrays are skipped
    np.savez(tmp_path / "SMPLX_NEUTRAL.npz", joint2num=trap, **model_arrays)
    assert inspect_npz(tmp_path / "SMPLX_NEUTRAL.npz")["joint2num"][1].hasobject
    body = SMPLXBody(tmp_path)
    assert body(**_rest(body)).vertices.shape == (1, 10475, 3) and UNPICKLED == []
    np.savez(tmp_path / "evil.npz", **dict(model_arrays, f=trap))
    with pytest.raises(ValueError, match="Python objects"):
        SMPLXBody(tmp_path / "evil.npz")
    assert UNPICKLED == []
