"""Head pose from face landmarks: the canonical face fitted to each frame's image points.

For the image positions ``x (F, P, 2)`` of the rigid landmarks and the canonical face ``C``
(metres, head frame, :mod:`.canonical`), the pose ``x_cam = R C + T`` is found by POSIT
(DeMenthon and Davis 1995) for a pinhole camera ``K``: each iteration solves the
scaled-orthographic camera ``(x_i − c)(1 + ε_i) = s R[:2] C_i + (s T_x, s T_y)`` by linear least
squares, with ``ε_i = (R C_i)_z / T_z`` from the previous one — it converges to the
perspective pose. ``R`` is the head's rotation in the camera frame (OpenCV: x right, y down,
z forward) and

    T_z = f / s,   T_x = (u − cx) T_z / f,   T_y = (v − cy) T_z / f      (metres, T_z > 0)

with ``(u, v)`` the image of the head centre and ``s`` the head's scale in pixels per metre at
its depth: a head that appears ``k×`` larger is at depth ``T_z / k``, and a head turned
counter-clockwise on screen by θ has turned by θ about −z. Depths are as right as the assumed
field of view (``TrackerConfig.fov_deg``) and the canonical face's size (an average avatar
face); rotations and depth ratios between frames depend on neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from factorportrait.geometry.rays import matrix_from_rts
from factorportrait.geometry.rotations import (axis_angle_to_matrix, matrix_to_axis_angle,
                                               matrix_to_quaternion, quaternion_to_matrix)
from factorportrait.tracking.canonical import RIGID, canonical_face

POSIT_ITERATIONS = 8


@dataclass(frozen=True, eq=False)
class HeadPose:
    """Per-frame head pose in image terms (module docstring): ``rotation (F, 3, 3)`` camera
    frame, ``scale (F,)`` pixels per metre, ``center (F, 2)`` pixels of the head centre."""

    rotation: Tensor
    scale: Tensor
    center: Tensor

    def __len__(self) -> int:
        return self.scale.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> HeadPose:
        index = [index] if isinstance(index, int) else index
        return HeadPose(self.rotation[index], self.scale[index], self.center[index])

    def head_rotation(self) -> Tensor:
        """``(F, 3)`` axis-angle radians (the control track's ``head_rotation``)."""
        return matrix_to_axis_angle(self.rotation.double()).float()

    def head_translation(self, K: Tensor) -> Tensor:
        """``(F, 3)`` metres: the head centre in the camera frame of intrinsics ``K (3, 3)``
        (module docstring; ``f`` is the mean of fx and fy)."""
        K = K.double()
        depth = (K[0, 0] + K[1, 1]) / 2 / self.scale.double()
        x = (self.center[:, 0].double() - K[0, 2]) * depth / K[0, 0]
        y = (self.center[:, 1].double() - K[1, 2]) * depth / K[1, 1]
        return torch.stack([x, y, depth], -1).float()

    def camera_points(self, points: Tensor, K: Tensor) -> Tensor:
        """Camera-frame positions ``(F, P, 3)`` of head-frame points ``(P, 3)`` (metres)."""
        moved = torch.einsum("fij,pj->fpi", self.rotation.double(), points.double())
        return moved + self.head_translation(K).double()[:, None]

    def project(self, points: Tensor, K: Tensor) -> Tensor:
        """Image positions ``(F, P, 2)`` of head-frame points ``(P, 3)`` seen through ``K``."""
        cam = self.camera_points(points, K)
        K = K.double()
        uv = cam[..., :2] / cam[..., 2:] * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
        return uv.to(self.center.dtype)

    def relative_rts(self, height: int, width: int, reference: int = 0) -> Tensor:
        """DeX-Portrait's ``P = [sR | t]`` ``(F, 3, 4)`` of every frame relative to frame
        ``reference``: the similarity that carries the reference's head onto each frame's, in
        image coordinates centred and divided by half the image height, ``u = (x − W/2) /
        (H/2)``, ``v = (y − H/2) / (H/2)`` (for a square image, the ``[-1, 1]`` grid of
        :func:`~factorportrait.geometry.head_pose_ray_map`). The reference frame gives
        ``[I | 0]``; ``s`` is the apparent-size ratio."""
        scale = self.scale.double() / self.scale[reference].double()  # (F,)
        rotation = self.rotation.double() @ self.rotation[reference].double().T  # (F, 3, 3)
        offset = torch.zeros(len(self), 3, dtype=torch.float64)
        centre = torch.tensor([width / 2, height / 2], dtype=torch.float64)
        offset[:, :2] = (self.center.double() - centre) / (height / 2)
        translation = offset - scale[:, None] * torch.einsum("fij,j->fi", rotation,
                                                             offset[reference])
        return matrix_from_rts(rotation, translation, scale)

    def to_vector(self) -> Tensor:
        """``(F, 7)``: quaternion (w, x, y, z), log-scale, centre — a form to filter."""
        quat = matrix_to_quaternion(self.rotation.double())
        return torch.cat([quat, self.scale.double().log()[:, None], self.center.double()], 1)

    @classmethod
    def from_vector(cls, vector: Tensor) -> HeadPose:
        return cls(quaternion_to_matrix(vector[:, :4]), vector[:, 4].exp(), vector[:, 5:7])

    @classmethod
    def from_track(cls, head_rotation: Tensor, head_translation: Tensor, K: Tensor) -> HeadPose:
        """The inverse of :meth:`head_rotation` / :meth:`head_translation`."""
        K = K.double()
        t = head_translation.double()
        center = torch.stack([t[:, 0] * K[0, 0] / t[:, 2] + K[0, 2],
                              t[:, 1] * K[1, 1] / t[:, 2] + K[1, 2]], -1)
        scale = (K[0, 0] + K[1, 1]) / 2 / t[:, 2]
        return cls(axis_angle_to_matrix(head_rotation.double()), scale, center)


def _proper_rotation(rows: Tensor) -> Tensor:
    """The rotation nearest to ``(F, 3, 3)`` matrices (SVD, determinant +1)."""
    u, _, vt = torch.linalg.svd(rows)
    fix = torch.ones(rows.shape[0], 3, dtype=rows.dtype)
    fix[:, 2] = torch.sign(torch.linalg.det(u @ vt))
    return u @ torch.diag_embed(fix) @ vt


def posit(model: Tensor, image: Tensor, K: Tensor, iterations: int = POSIT_ITERATIONS
          ) -> HeadPose:
    """Perspective pose of ``model (P, 3)`` points seen at ``image (F, P, 2)`` pixels through
    ``K (3, 3)`` (module docstring), batched over frames; float64."""
    model, image, K = model.double(), image.double(), K.double()
    focal = (K[0, 0] + K[1, 1]) / 2
    centred = (image - K[:2, 2]) * (focal / torch.stack([K[0, 0], K[1, 1]]))  # square pixels
    homogeneous = torch.cat([model, torch.ones(model.shape[0], 1, dtype=model.dtype)], 1)
    solve = torch.linalg.pinv(homogeneous)  # (4, P): least squares for [sR_row | s t]
    epsilon = torch.zeros(image.shape[:2], dtype=torch.float64)
    for _ in range(iterations):
        rows = torch.einsum("kp,fpc->fck", solve, centred * (1 + epsilon)[..., None])  # (F,2,4)
        first, second = rows[:, 0, :3], rows[:, 1, :3]
        scale = (first.norm(dim=1) + second.norm(dim=1)) / 2
        third = torch.linalg.cross(first, second)
        rotation = _proper_rotation(torch.stack(
            [first, second, third / third.norm(dim=1, keepdim=True) * scale[:, None]], 1))
        center = rows[:, :, 3]  # s T_xy: the head centre's image offset
        depth = focal / scale
        epsilon = torch.einsum("fj,pj->fp", rotation[:, 2], model) / depth[:, None]
    center = center / focal * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
    return HeadPose(rotation, scale, center)


def fit_head_pose(landmarks: Tensor, K: Tensor, indices: tuple[int, ...] = RIGID
                  ) -> tuple[HeadPose, Tensor]:
    """Head pose of landmarks ``(F, 478, ≥2)`` seen through ``K (3, 3)`` ->
    ``(HeadPose, residual (F,))``: POSIT on the rigid canonical points; the residual is the RMS
    reprojection error (pixels) of those points."""
    canonical = canonical_face()[list(indices)]  # (P, 3)
    observed = landmarks[:, list(indices), :2].double()
    pose = posit(canonical, observed, K)
    residual = (pose.project(canonical, K).double() - observed).pow(2).sum(-1).mean(-1).sqrt()
    return pose, residual


def fit_multiview_pose(image: Tensor, world_to_camera: Tensor, K: Tensor, rotation: Tensor,
                       centre: Tensor, weights: Tensor | None = None,
                       indices: tuple[int, ...] = RIGID, iterations: int = 10
                       ) -> tuple[Tensor, Tensor]:
    """The head pose in a calibrated rig's world from every view at once: Gauss-Newton on the
    reprojection error of the rigid canonical points over all views, per frame.

    Args:
        image: ``(V, F, 478, ≥2)`` landmarks of ``V`` synchronised views.
        world_to_camera: ``(V, 4, 4)``; K: ``(V, 3, 3)``.
        rotation, centre: ``(F, 3, 3)``, ``(F, 3)`` world pose to start from.
        weights: ``(V, F)`` trust in each view's landmarks (e.g. 0 where untracked); each is
            further scaled by how squarely the view sees the face (the cosine between the
            face's direction and the way to the camera, floored at 0.1) at every iteration.
    Returns:
        ``rotation (F, 3, 3)``, ``centre (F, 3)`` float64.
    """
    model = canonical_face()[list(indices)]  # (P, 3)
    observed = image[:, :, list(indices), :2].double()  # (V, F, P, 2)
    w2c, K = world_to_camera.double(), K.double()
    base = weights.double() if weights is not None else torch.ones(observed.shape[:2],
                                                                  dtype=torch.float64)

    def residuals(params: Tensor, rot: Tensor, view_weights: Tensor, seen: Tensor) -> Tensor:
        x, y, z = params[:3].unbind()
        zero = torch.zeros_like(x)
        skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero]).view(3, 3)
        turned = (torch.eye(3, dtype=params.dtype) + skew) @ rot  # first order in the step
        world = model @ turned.T + params[3:]  # (P, 3)
        cam = world @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # (V, P, 3)
        uv = cam[..., :2] / cam[..., 2:] * torch.stack([K[:, 0, 0], K[:, 1, 1]], -1)[:, None] \
            + K[:, None, :2, 2]
        return ((uv - seen) * view_weights.sqrt()[:, None, None]).flatten()

    from torch.func import jacrev, vmap

    jacobian = vmap(jacrev(residuals), in_dims=(0, 0, 1, 1))
    value = vmap(residuals, in_dims=(0, 0, 1, 1))
    frames = rotation.shape[0]
    rot, cen = rotation.double().clone(), centre.double().clone()
    camera_centres = torch.linalg.inv(w2c)[:, :3, 3]  # (V, 3)
    for _ in range(iterations):
        facing = rot @ torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)  # (F, 3)
        towards = torch.nn.functional.normalize(camera_centres[:, None] - cen[None], dim=-1)
        view_weights = base * (towards * facing[None]).sum(-1).clamp_min(0.1)  # (V, F)
        params = torch.cat([torch.zeros(frames, 3, dtype=torch.float64), cen], 1)
        J = jacobian(params, rot, view_weights, observed)  # (F, R, 6)
        r = value(params, rot, view_weights, observed)  # (F, R)
        JtJ = J.transpose(1, 2) @ J + 1e-6 * torch.eye(6, dtype=torch.float64)
        step = torch.linalg.solve(JtJ, -(J.transpose(1, 2) @ r[..., None]))[..., 0]  # (F, 6)
        rot = axis_angle_to_matrix(step[:, :3]) @ rot
        cen = cen + step[:, 3:]
    return rot, cen
