"""The canonical face: MediaPipe's 478 landmark positions on a neutral face in the head frame
of :class:`~factorportrait.body.HeadAvatar` — metres, the head centre at the origin, x the
subject's left (image right when the face looks at the camera), y down, the face looking
along −z. A head pose of zero rotation therefore faces the camera, as the avatar's rest pose
does, and tracked poses drive the avatar mesh in its own convention.

The set is our own measurement, shipped as ``canonical_face.safetensors`` and rebuilt by
``python tools/make_canonical_face.py``: procedural avatars are rendered in colour from known
head poses, MediaPipe finds the landmarks in each render, every landmark is triangulated
from its image positions over one identity's poses (linear least squares with the known
cameras and head motion), and the triangulated faces are averaged over identities. Only
image positions enter, never MediaPipe's relative depth, whose scale is not metric.

Named points (MediaPipe's topology) and :data:`RIGID` — points that expressions barely move
(eye corners, nose, cheekbones, temples), used for the pose fit.
"""

from __future__ import annotations

import functools
import math
from importlib import resources

import numpy as np
import torch
from torch import Tensor

RIGHT_PUPIL = 468  # the subject's right iris centre (the left one in a frontal image)
LEFT_PUPIL = 473
NOSE_TIP = 1
UPPER_LIP = 13  # inner lip midpoints
LOWER_LIP = 14
CHIN = 152
RIGHT_EYE = (33, 133)  # outer, inner corner
LEFT_EYE = (263, 362)
RIGHT_EYE_LIDS = (159, 145)  # upper, lower lid midpoints
LEFT_EYE_LIDS = (386, 374)
MOUTH_CORNERS = (61, 291)
# Eye corners, nose (bridge, tip, wings), cheekbones and the contour at the temples. On held-out
# talking avatar clips this set gave RMS errors of 2.3° yaw, 4.6° pitch, 1.4° roll (forehead
# points, often under hair, did worse; all 468 points did slightly better but take in the jaw).
RIGID = (33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 327, 129, 358, 48, 278,
         116, 345, 123, 352, 117, 346, 234, 454, 93, 323)
DATA_FILE = "canonical_face.safetensors"
FORMAT = "factorportrait.canonical_face"
BUILD_YAWS = (-30.0, -15.0, 0.0, 15.0, 30.0)  # degrees, the poses each identity is seen in
BUILD_PITCHES = (-15.0, 0.0, 15.0)


def face_points(landmarks: Tensor) -> Tensor:
    """The avatar's five face points (``expression.crop.FACE_POINT_NAMES`` order: left pupil,
    right pupil, nose tip, mouth, chin) from landmarks ``(..., 478, D)`` -> ``(..., 5, D)``."""
    mouth = (landmarks[..., UPPER_LIP, :] + landmarks[..., LOWER_LIP, :]) / 2
    return torch.stack([landmarks[..., LEFT_PUPIL, :], landmarks[..., RIGHT_PUPIL, :],
                        landmarks[..., NOSE_TIP, :], mouth, landmarks[..., CHIN, :]], -2)


@functools.cache
def canonical_face() -> Tensor:
    """``(478, 3)`` float64 canonical landmarks (module docstring)."""
    from safetensors.torch import load

    data = resources.files("factorportrait.tracking").joinpath(DATA_FILE).read_bytes()
    return load(data)["landmarks"].double()


def triangulate(image: Tensor, rotation: Tensor, translation: Tensor, K: Tensor) -> Tensor:
    """Points ``(P, 3)`` seen at ``image (V, P, 2)`` pixels in ``V`` views, where view ``v``
    maps them to its camera frame by ``x ↦ rotation[v] x + translation[v]`` and projects with
    ``K`` (``(3, 3)``, or ``(V, 3, 3)`` per view): linear least squares on
    ``(u − cx) z − fx x = 0`` and its ``v`` twin."""
    image, rotation, translation, K = (t.double() for t in (image, rotation, translation, K))
    K = K.expand(image.shape[0], 3, 3) if K.ndim == 2 else K
    rows, rhs = [], []
    for axis in (0, 1):
        offset = image[..., axis] - K[:, None, axis, 2]  # (V, P)
        focal = K[:, None, axis, axis]  # (V, 1)
        # (offset · R[2] − f · R[axis]) · x = f · t[axis] − offset · t[2]
        rows.append(offset[..., None] * rotation[:, None, 2]
                    - focal[..., None] * rotation[:, None, axis])
        rhs.append(focal * translation[:, None, axis] - offset * translation[:, None, 2])
    A = torch.cat(rows, 0).transpose(0, 1)  # (P, 2V, 3)
    b = torch.cat(rhs, 0).transpose(0, 1)[..., None]  # (P, 2V, 1)
    return torch.linalg.lstsq(A, b).solution[..., 0]  # (P, 3)


def build_canonical_face(identities: int = 16, size: int = 512, distance: float = 0.5,
                         fov_deg: float = 30.0, seed: int = 0) -> tuple[Tensor, int]:
    """Measure the canonical face from ``identities`` avatars, each rendered at
    :data:`BUILD_YAWS` × :data:`BUILD_PITCHES` (module docstring) -> ``(478, 3)`` float64
    metres and the number of identities MediaPipe found a face in every view of."""
    from factorportrait.body import AvatarIdentity, HeadAvatar
    from factorportrait.data.synthetic.performance import _euler_to_axis_angle
    from factorportrait.geometry.trajectories import static
    from factorportrait.render import Meshes, render
    from factorportrait.tracking.landmarks import MediaPipeFaces

    camera = static(1, width=size, height=size, distance=distance, fov_deg=fov_deg)
    world_to_camera = camera.world_to_camera()[0].double()
    angles = torch.tensor([[math.radians(yaw), math.radians(pitch), 0.0]
                           for yaw in BUILD_YAWS for pitch in BUILD_PITCHES])
    rotations = _euler_to_axis_angle(angles)  # (V, 3)
    views = len(rotations)
    faces_found = []
    with MediaPipeFaces() as detector:
        for index in range(identities):
            avatar = HeadAvatar(AvatarIdentity.sample(seed=seed + index))
            verts = avatar.pose(torch.zeros(views, avatar.num_expressions), rotations,
                                torch.zeros(views, 3))
            images = render(Meshes(verts, avatar.faces, avatar.vertex_colors),
                            (camera.K.expand(views, 3, 3), camera.c2w.expand(views, 4, 4)),
                            size, size, outputs=("rgb",), supersample=2)["rgb"]
            frames = (images.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy()
            seen = []
            for frame in frames:
                found = detector.detect(frame)
                points = None if not found else detector.landmarks(frame, found[0])
                seen.append(points)
            if any(points is None for points in seen):
                continue
            image = torch.from_numpy(np.stack(seen))[..., :2]  # (V, 478, 2)
            head_r, head_t = avatar.head_transform(rotations, torch.zeros(views, 3))
            rotation = world_to_camera[:3, :3] @ head_r.double()
            translation = head_t.double() @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
            faces_found.append(triangulate(image, rotation, translation, camera.K[0]))
    if not faces_found:
        raise RuntimeError("build_canonical_face: MediaPipe missed a view of every identity")
    return torch.stack(faces_found).mean(0), len(faces_found)
