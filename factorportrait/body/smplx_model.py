"""SMPL-X bodies through the ``smplx`` package: per-frame parameters -> vertices and faces.

Model files are obtained from https://smpl-x.is.tue.mpg.de (registration required; the
download includes ``SMPLX_{NEUTRAL,FEMALE,MALE}.npz``). Only ``.npz`` files are accepted and
nothing is ever unpickled: every array's header is checked without loading it, and an archive
holding object arrays (the official ``.npz`` carries two pickled dicts, ``joint2num`` and
``part2num``) is copied to a temporary archive of its numeric arrays before ``smplx`` reads it.

Output frame: by default the OpenCV world of the project (y down, the body facing -z), i.e.
SMPL-X's own frame (y up, facing +z) rotated by pi about x; ``frame="smplx"`` keeps SMPL-X's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from factorportrait.body.smplx_synthetic import (
    NUM_JOINTS,
    POSE_BASIS,
    write_synthetic_smplx_model,
)

__all__ = ["SMPLXBody", "SMPLXOutput", "inspect_npz", "resolve_model_file",
           "write_synthetic_smplx_model"]

LOGGER = logging.getLogger(__name__)
SMPLX_URL = "https://smpl-x.is.tue.mpg.de"
REQUIRED_ARRAYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights",
                   "kintree_table", "hands_componentsl", "hands_componentsr", "hands_meanl",
                   "hands_meanr", "lmk_faces_idx", "lmk_bary_coords")
OPTIONAL_ARRAYS = ("dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords")
SMPLX_TO_OPENCV_WORLD = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
PKL_CONVERSION = (
    "FactorPortrait never unpickles files. Use the .npz files of the same SMPL-X download, or "
    "convert once in an environment you trust:\n"
    "    import pickle, numpy as np\n"
    "    data = pickle.load(open('SMPLX_NEUTRAL.pkl', 'rb'), encoding='latin1')\n"
    "    np.savez('SMPLX_NEUTRAL.npz', **{k: np.asarray(v.todense() if hasattr(v, 'todense') "
    "else v) for k, v in data.items() if k in %s})" % (REQUIRED_ARRAYS + OPTIONAL_ARRAYS,))


def _expected(path: Path | str) -> str:
    return (f"expected {path} to be an SMPL-X model archive SMPLX_<GENDER>.npz with arrays "
            f"{', '.join(REQUIRED_ARRAYS)}; register and download the model files from "
            f"{SMPLX_URL}")


def resolve_model_file(model_path: str | Path, gender: str = "neutral") -> Path:
    """The ``.npz`` file of ``model_path`` (a file, or a folder holding
    ``SMPLX_{GENDER}.npz``); raises ``FileNotFoundError`` / ``ValueError`` saying what was
    expected."""
    if gender.lower() not in ("neutral", "female", "male"):
        raise ValueError(f"gender: expected 'neutral', 'female' or 'male', got {gender!r}")
    path = Path(model_path)
    if path.is_dir():
        name = f"SMPLX_{gender.upper()}"
        for folder in (path, path / "smplx"):
            if (folder / f"{name}.npz").is_file():
                return folder / f"{name}.npz"
            if (folder / f"{name}.pkl").is_file():
                raise ValueError(f"{folder / name}.pkl: pickle model files are not loaded. "
                                 + PKL_CONVERSION)
        raise FileNotFoundError("SMPL-X model not found: " + _expected(path / f"{name}.npz"))
    if path.suffix == ".pkl":
        raise ValueError(f"{path}: pickle model files are not loaded. " + PKL_CONVERSION)
    if not path.is_file():
        raise FileNotFoundError("SMPL-X model not found: " + _expected(path))
    if path.suffix != ".npz":
        raise ValueError(f"{path}: " + _expected(path))
    return path


def inspect_npz(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of every array in an ``.npz`` archive, read from the ``.npy``
    headers only (no array data is loaded, nothing is unpickled)."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not name.endswith(".npy"):
                    continue
                with archive.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(member)
                headers[name[:-4]] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise ValueError(f"{path}: not a readable .npz archive ({error}); " + _expected(path)
                         ) from error
    return headers


def _validate(path: Path, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Check the arrays smplx reads for SMPL-X, from their headers."""
    missing = [name for name in REQUIRED_ARRAYS if name not in headers]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}; " + _expected(path))
    for name in REQUIRED_ARRAYS + OPTIONAL_ARRAYS:
        if name in headers and headers[name][1].hasobject:
            raise ValueError(f"{path}: array {name!r} holds Python objects (pickled); "
                             "expected a numeric array")
    shape = {name: headers[name][0] for name in REQUIRED_ARRAYS}
    verts = shape["v_template"][0] if len(shape["v_template"]) == 2 else -1
    expected = {"v_template": (verts, 3), "posedirs": (verts, 3, POSE_BASIS),
                "J_regressor": (NUM_JOINTS, verts), "weights": (verts, NUM_JOINTS),
                "kintree_table": (2, NUM_JOINTS)}
    for name, want in expected.items():
        if shape[name] != want:
            raise ValueError(f"{path}: array {name!r} has shape {shape[name]}, expected {want} "
                             f"(SMPL-X has {NUM_JOINTS} joints)")
    if len(shape["shapedirs"]) != 3 or shape["shapedirs"][:2] != (verts, 3):
        raise ValueError(f"{path}: array 'shapedirs' has shape {shape['shapedirs']}, expected "
                         f"({verts}, 3, shape + expression components)")
    if len(shape["f"]) != 2 or shape["f"][1] != 3:
        raise ValueError(f"{path}: array 'f' has shape {shape['f']}, expected (faces, 3)")
    from smplx.vertex_ids import vertex_ids

    needed = max(vertex_ids["smplx"].values()) + 1
    if verts < needed:
        raise ValueError(f"{path}: {verts} vertices, expected at least {needed} (smplx reads "
                         "keypoints at fixed SMPL-X vertex indices; SMPL-X has 10475)")


def _numeric_copy(path: Path, headers: dict, folder: str) -> Path:
    """Copy the numeric arrays smplx needs into ``folder`` (``allow_pickle=False``)."""
    keep = [name for name in REQUIRED_ARRAYS + OPTIONAL_ARRAYS if name in headers]
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in keep}
    target = Path(folder) / path.name
    np.savez(target, **arrays)
    return target


@dataclass(frozen=True)
class SMPLXOutput:
    """Posed SMPL-X meshes: ``vertices (F, V, 3)`` and ``joints (F, J, 3)`` (metres)."""

    vertices: torch.Tensor
    joints: torch.Tensor


class SMPLXBody(torch.nn.Module):
    """SMPL-X (via ``smplx.SMPLX``) turning per-frame parameters into meshes.

    Args:
        model_path: ``SMPLX_<GENDER>.npz`` or a folder holding it (see module docstring).
        gender: ``"neutral"``, ``"female"`` or ``"male"`` (used when ``model_path`` is a
            folder).
        num_betas: shape components used.
        num_expression: expression components used.
        device: where the model lives (default CPU).
        frame: ``"opencv"`` (project world: y down, facing -z) or ``"smplx"``.
    """

    def __init__(self, model_path: str | Path, gender: str = "neutral", num_betas: int = 10,
                 num_expression: int = 10, device: torch.device | str | None = None,
                 frame: str = "opencv") -> None:
        super().__init__()
        if frame not in ("opencv", "smplx"):
            raise ValueError(f"frame: expected 'opencv' or 'smplx', got {frame!r}")
        path = resolve_model_file(model_path, gender)
        headers = inspect_npz(path)
        _validate(path, headers)
        components = headers["shapedirs"][0][2]
        available = (300, 100) if components >= 400 else (10, 10)
        if num_betas > available[0] or num_expression > available[1]:
            raise ValueError(f"num_betas, num_expression: expected at most {available} for "
                             f"{path} (shapedirs has {components} components), got "
                             f"({num_betas}, {num_expression})")
        self.model = self._load(path, headers, gender, num_betas, num_expression)
        self.model.to(device)
        self.frame = frame
        self.num_betas, self.num_expression = num_betas, num_expression
        self.register_buffer("faces", self.model.faces_tensor.clone(), persistent=False)

    @staticmethod
    def _load(path: Path, headers: dict, gender: str, num_betas: int, num_expression: int
              ) -> torch.nn.Module:
        import smplx

        messages = io.StringIO()
        with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(messages):
            pickled = any(dtype.hasobject for _, dtype in headers.values())
            source = _numeric_copy(path, headers, folder) if pickled else path
            model = smplx.SMPLX(str(source), gender=gender, num_betas=num_betas,
                                num_expression_coeffs=num_expression, use_pca=False,
                                flat_hand_mean=True, use_face_contour=False, ext="npz")
        if messages.getvalue().strip():
            LOGGER.info("smplx: %s", messages.getvalue().strip())
        return model

    @property
    def num_vertices(self) -> int:
        return int(self.model.v_template.shape[0])

    def forward(self, global_orient: torch.Tensor, body_pose: torch.Tensor,
                jaw_pose: torch.Tensor | None = None, leye_pose: torch.Tensor | None = None,
                reye_pose: torch.Tensor | None = None, betas: torch.Tensor | None = None,
                expression: torch.Tensor | None = None, transl: torch.Tensor | None = None,
                left_hand_pose: torch.Tensor | None = None,
                right_hand_pose: torch.Tensor | None = None) -> SMPLXOutput:
        """Pose ``F`` frames (axis-angle, radians; missing terms are zero).

        Args:
            global_orient: ``(F, 3)`` root rotation.
            body_pose: ``(F, 63)`` 21 body joints.
            jaw_pose, leye_pose, reye_pose: ``(F, 3)`` each.
            betas: ``(F, num_betas)`` or ``(1, num_betas)`` shape.
            expression: ``(F, num_expression)``.
            transl: ``(F, 3)`` translation (applied in SMPL-X's frame, before ``frame``).
            left_hand_pose, right_hand_pose: ``(F, 45)`` 15 joints each.

        Returns:
            :class:`SMPLXOutput` with ``vertices (F, V, 3)`` and ``joints (F, J, 3)``.
        """
        frames = global_orient.shape[0]
        reference = self.model.v_template
        sizes = {"global_orient": 3, "body_pose": 63, "jaw_pose": 3, "leye_pose": 3,
                 "reye_pose": 3, "betas": self.num_betas, "expression": self.num_expression,
                 "transl": 3, "left_hand_pose": 45, "right_hand_pose": 45}
        given = {"global_orient": global_orient, "body_pose": body_pose, "jaw_pose": jaw_pose,
                 "leye_pose": leye_pose, "reye_pose": reye_pose, "betas": betas,
                 "expression": expression, "transl": transl,
                 "left_hand_pose": left_hand_pose, "right_hand_pose": right_hand_pose}
        params = {}
        for name, size in sizes.items():
            value = given[name]
            if value is None:
                value = reference.new_zeros(frames, size)
            value = value.to(reference)
            if name == "betas" and value.shape[0] == 1:
                value = value.expand(frames, -1)
            if value.shape != (frames, size):
                raise ValueError(f"{name}: expected ({frames}, {size}), got {tuple(value.shape)}")
            params[name] = value
        output = self.model(**params, return_verts=True)
        vertices, joints = output.vertices, output.joints
        if self.frame == "opencv":
            rotation = SMPLX_TO_OPENCV_WORLD.to(vertices)
            vertices, joints = vertices @ rotation.T, joints @ rotation.T
        return SMPLXOutput(vertices=vertices, joints=joints)
