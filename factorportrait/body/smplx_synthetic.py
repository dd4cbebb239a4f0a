"""A structurally valid SMPL-X model archive for tests and demos (no real SMPL-X data).

The file has every array ``smplx.SMPLX`` reads, with SMPL-X's shapes: 55 joints in SMPL-X's
kinematic tree (y up, facing +z, metres), one small ellipsoid "bone blob" of vertices per joint
(so the body is a rigidly skinned stick figure), a joint regressor that recovers the joint
positions exactly, shape directions that scale the body, expression directions on the head
blob only, zero pose correctives, identity hand PCA and valid landmark embeddings. smplx reads
keypoints at fixed vertex indices up to 9929, so the archive needs at least 9930 vertices
(default: SMPL-X's 10475).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NUM_JOINTS = 55
POSE_BASIS = (NUM_JOINTS - 1) * 9
# SMPL-X kinematic tree: body (0-21), jaw 22, eyes 23-24, left hand 25-39, right hand 40-54.
SMPLX_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19,
                 15, 15, 15, 20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
                 21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53)
_BODY_JOINTS = (  # left side (+x) of SMPL-X's rest pose, metres
    (0.0, -0.35, 0.0), (0.06, -0.44, 0.0), (-0.06, -0.44, 0.0), (0.0, -0.24, -0.01),
    (0.11, -0.82, 0.0), (-0.11, -0.82, 0.0), (0.0, -0.10, 0.0), (0.07, -1.22, -0.04),
    (-0.07, -1.22, -0.04), (0.0, -0.05, 0.01), (0.12, -1.27, 0.08), (-0.12, -1.27, 0.08),
    (0.0, 0.16, -0.01), (0.07, 0.07, -0.01), (-0.07, 0.07, -0.01), (0.0, 0.25, 0.02),
    (0.17, 0.10, -0.02), (-0.17, 0.10, -0.02), (0.43, 0.08, -0.04), (-0.43, 0.08, -0.04),
    (0.68, 0.09, -0.04), (-0.68, 0.09, -0.04), (0.0, 0.21, 0.04), (0.03, 0.29, 0.09),
    (-0.03, 0.29, 0.09))
HEAD_JOINT = 15
MIN_VERTICES = 9930


def rest_joints() -> np.ndarray:
    """``(55, 3)`` rest joint positions of the synthetic body (SMPL-X frame, metres)."""
    joints = [np.array(j, dtype=np.float64) for j in _BODY_JOINTS]
    for wrist, side in ((20, 1.0), (21, -1.0)):
        # index, middle, pinky, ring: three segments each along the arm; then the thumb
        for depth in (0.03, 0.01, -0.03, -0.01):
            for segment in range(3):
                joints.append(joints[wrist] + [side * (0.09 + 0.03 * segment), 0.0, depth])
        for segment in range(3):
            joints.append(joints[wrist] + [side * (0.03 + 0.025 * segment), -0.01,
                                           0.04 + 0.02 * segment])
    return np.stack(joints)


def _blob_radii(joint: int) -> tuple[float, float, float]:
    if joint == HEAD_JOINT:
        return (0.08, 0.10, 0.09)
    if joint >= 25:
        return (0.012, 0.008, 0.008)
    if joint in (23, 24):
        return (0.012, 0.012, 0.012)
    return (0.05, 0.04, 0.05) if joint in (0, 3, 6, 9) else (0.035, 0.035, 0.035)


def _blob(center: np.ndarray, radii: tuple[float, float, float], rows: int, cols: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """UV ellipsoid with ``rows * cols + 2`` vertices and outward faces."""
    theta = np.linspace(0, np.pi, rows + 2)[1:-1]
    phi = np.linspace(0, 2 * np.pi, cols, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    sphere = np.stack([np.sin(t) * np.sin(p), np.cos(t), np.sin(t) * np.cos(p)], -1)
    sphere = np.concatenate([sphere.reshape(-1, 3), [[0, 1, 0], [0, -1, 0]]])
    faces = []
    for r in range(rows - 1):
        for c in range(cols):
            a, b = r * cols + c, r * cols + (c + 1) % cols
            faces += [(a, a + cols, b), (b, a + cols, b + cols)]
    top, bottom = rows * cols, rows * cols + 1
    for c in range(cols):
        faces += [(top, c, (c + 1) % cols),
                  (bottom, (rows - 1) * cols + (c + 1) % cols, (rows - 1) * cols + c)]
    return center + sphere * np.asarray(radii), np.asarray(faces, dtype=np.int64)


def _geometry(num_vertices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices ``(V, 3)``, faces ``(M, 3)`` and the owning joint of every vertex ``(V,)``;
    vertices beyond the 55 blobs sit at the pelvis, unused by faces, with owner -1."""
    joints = rest_joints()
    cols = 12
    rows = (num_vertices // NUM_JOINTS - 2) // cols
    verts, faces, owner = [], [], []
    for joint in range(NUM_JOINTS):
        blob_verts, blob_faces = _blob(joints[joint], _blob_radii(joint), rows, cols)
        faces.append(blob_faces + sum(len(v) for v in verts))
        verts.append(blob_verts)
        owner.append(np.full(len(blob_verts), joint))
    extra = num_vertices - sum(len(v) for v in verts)
    verts.append(np.repeat(joints[:1], extra, axis=0))
    owner.append(np.full(extra, -1))
    return np.concatenate(verts), np.concatenate(faces), np.concatenate(owner)


def _landmarks(rng: np.random.Generator, num_faces: int, shape: tuple[int, ...]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Random landmark embeddings: face indices ``shape`` and barycentrics ``shape + (3,)``."""
    index = rng.integers(0, num_faces, size=shape).astype(np.int64)
    bary = rng.random(shape + (3,)) + 0.1
    return index, bary / bary.sum(-1, keepdims=True)


def write_synthetic_smplx_model(path: str | Path, num_vertices: int = 10475, seed: int = 0,
                                num_betas: int = 10, num_expression: int = 10) -> Path:
    """Write a structurally valid ``SMPLX_*.npz`` (see module docstring) and return its path.

    Args:
        path: target ``.npz`` file, or a folder (the file is ``SMPLX_NEUTRAL.npz`` in it).
        num_vertices: at least 9930 (smplx's fixed keypoint vertex indices).
        seed: seeds the shape / expression directions, hand means and landmarks.
        num_betas, num_expression: shape and expression components stored.
    """
    if num_vertices < MIN_VERTICES:
        raise ValueError(f"num_vertices: expected >= {MIN_VERTICES} (smplx reads keypoints "
                         f"at fixed SMPL-X vertex indices up to {MIN_VERTICES - 1}), "
                         f"got {num_vertices}")
    path = Path(path)
    if path.suffix != ".npz":
        path = path / "SMPLX_NEUTRAL.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    verts, faces, owner = _geometry(num_vertices)
    joints = rest_joints()
    regressor = (owner[None, :] == np.arange(NUM_JOINTS)[:, None]).astype(np.float64)
    regressor /= regressor.sum(1, keepdims=True)  # blob centroid = joint
    parents = np.asarray(SMPLX_PARENTS)
    weights = np.zeros((num_vertices, NUM_JOINTS))
    weights[np.arange(num_vertices), np.maximum(owner, 0)] = 1.0
    shape_dirs = (verts - joints[0])[..., None] * rng.normal(0, 0.03, (1, 3, num_betas))
    expression_dirs = rng.normal(0, 0.004, (num_vertices, 3, num_expression))
    expression_dirs[owner != HEAD_JOINT] = 0.0
    lmk_index, lmk_bary = _landmarks(rng, len(faces), (51,))
    dyn_index, dyn_bary = _landmarks(rng, len(faces), (79, 17))
    kintree = np.stack([np.where(parents < 0, 4294967295, parents), np.arange(NUM_JOINTS)])
    np.savez_compressed(
        path, v_template=verts, f=faces.astype(np.int64),
        shapedirs=np.concatenate([shape_dirs, expression_dirs], -1),
        posedirs=np.zeros((num_vertices, 3, POSE_BASIS), dtype=np.float32),
        J_regressor=regressor, weights=weights, kintree_table=kintree.astype(np.int64),
        hands_componentsl=np.eye(45), hands_componentsr=np.eye(45),
        hands_meanl=rng.normal(0, 0.1, 45), hands_meanr=rng.normal(0, 0.1, 45),
        lmk_faces_idx=lmk_index, lmk_bary_coords=lmk_bary,
        dynamic_lmk_faces_idx=dyn_index, dynamic_lmk_bary_coords=dyn_bary)
    return path
