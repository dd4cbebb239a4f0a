"""Batched pinhole cameras in the OpenCV convention.

Conventions (DESIGN.md "Geometry"): camera axes x right, y down, z forward; intrinsics ``K``
in pixels with the pixel-centre convention (pixel ``(u, v)`` covers ``[u, u+1) × [v, v+1)``, its
centre is ``(u + 0.5, v + 0.5)``), so resizing an image by ``s`` scales ``K``'s first two rows by
``s`` exactly; camera-to-world ``c2w`` in metres. The world is OpenCV-like too: "up" is −y.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from factorportrait.geometry.rotations import matrix_to_quaternion, quaternion_to_matrix, slerp

ROTATION_TOLERANCE = 1e-3  # max |RᵀR − I| and |det R − 1| accepted by Cameras
UP = (0.0, -1.0, 0.0)  # world "up" in the OpenCV world (y down)


def _first(mask: Tensor) -> int:
    """Index of the first True in a 1-D bool mask (−1 if none)."""
    hits = mask.nonzero()
    return int(hits[0, 0]) if len(hits) else -1


def _check_size(width: object, height: object) -> None:
    if (width is None) != (height is None):
        raise ValueError(f"Cameras: give both width and height or neither, got {width}, {height}")
    for name, value in (("width", width), ("height", height)):
        bad = isinstance(value, bool) or not isinstance(value, int) or value < 1
        if value is not None and bad:
            raise ValueError(f"Cameras: {name} must be a positive int or None, got {value!r}")


def _validate(K: Tensor, c2w: Tensor) -> None:
    """Raise ValueError naming the first problem (and frame index) in K (F,3,3) / c2w (F,4,4)."""
    for name, t, shape in (("K", K, (3, 3)), ("c2w", c2w, (4, 4))):
        if not isinstance(t, Tensor) or t.ndim != 3 or tuple(t.shape[1:]) != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            want = f"(F, {shape[0]}, {shape[1]})"
            raise ValueError(f"Cameras: {name} must be a tensor of shape {want}, got {got}")
        if not t.is_floating_point():
            raise ValueError(f"Cameras: {name} must be a floating-point tensor, got {t.dtype}")
    if K.shape[0] != c2w.shape[0]:
        raise ValueError(f"Cameras: K has {K.shape[0]} frames but c2w has {c2w.shape[0]}")
    if K.shape[0] == 0:
        raise ValueError("Cameras: need at least one frame, got 0")
    if K.dtype != c2w.dtype or K.device != c2w.device:
        raise ValueError(f"Cameras: K ({K.dtype}, {K.device}) and c2w ({c2w.dtype}, {c2w.device}) "
                         "differ in dtype or device")
    for name, t in (("K", K), ("c2w", c2w)):
        if (i := _first(~torch.isfinite(t).flatten(1).all(1))) >= 0:
            raise ValueError(f"Cameras: frame {i}: {name} has non-finite values")
    form_err = torch.cat([K[:, 2] - K.new_tensor([0.0, 0.0, 1.0]), K[:, 1, :1]], 1).abs().amax(1)
    if (i := _first(form_err > 1e-6)) >= 0:
        raise ValueError(f"Cameras: frame {i}: K must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]], "
                         f"got {K[i].tolist()}")
    if (i := _first((K[:, 0, 0] <= 0) | (K[:, 1, 1] <= 0))) >= 0:
        raise ValueError(f"Cameras: frame {i}: focal lengths must be positive, "
                         f"got fx={K[i, 0, 0]:.6g}, fy={K[i, 1, 1]:.6g}")
    bottom = c2w.new_tensor([0.0, 0.0, 0.0, 1.0])
    if (i := _first((c2w[:, 3] - bottom).abs().amax(1) > 1e-6)) >= 0:
        raise ValueError(f"Cameras: frame {i}: c2w bottom row must be [0, 0, 0, 1], "
                         f"got {c2w[i, 3].tolist()}")
    R = c2w[:, :3, :3]
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    ortho_err = (R.transpose(1, 2) @ R - eye).abs().flatten(1).amax(1)
    if (i := _first(ortho_err > ROTATION_TOLERANCE)) >= 0:
        raise ValueError(f"Cameras: frame {i}: c2w rotation is not orthonormal "
                         f"(max |RᵀR − I| = {ortho_err[i]:.3g} > {ROTATION_TOLERANCE})")
    det = torch.linalg.det(R)
    if (i := _first((det - 1).abs() > ROTATION_TOLERANCE)) >= 0:
        raise ValueError(f"Cameras: frame {i}: c2w rotation has det {det[i]:.6g}, expected +1 "
                         "(a reflection: is the matrix in another handedness/convention?)")


def invert_rigid(transform: Tensor) -> Tensor:
    """Closed-form inverse of rigid transforms ``(..., 4, 4)``: [R | t]⁻¹ = [Rᵀ | −Rᵀt]."""
    R, t = transform[..., :3, :3], transform[..., :3, 3:]
    out = torch.zeros_like(transform)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1
    return out


@dataclass(frozen=True, eq=False)
class Cameras:
    """F pinhole cameras: ``K (F, 3, 3)`` in pixels, ``c2w (F, 4, 4)`` OpenCV camera-to-world.

    ``width``/``height`` (pixels) are the image size K refers to, when known. Construction
    validates finiteness, K's form, positive focal lengths and proper rotations (det +1).
    Methods return new Cameras; the tensors keep their dtype and device.
    """

    K: Tensor
    c2w: Tensor
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        _check_size(self.width, self.height)
        _validate(self.K, self.c2w)

    def __repr__(self) -> str:
        size = "" if self.width is None else f", {self.width}x{self.height}"
        return f"Cameras(F={len(self)}{size}, {self.K.dtype}, {self.K.device})"

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def identity(cls, num_frames: int, K: Tensor, width: int | None = None,
                 height: int | None = None) -> Cameras:
        """``num_frames`` cameras at the world origin looking down +z.

        K: ``(3, 3)`` or ``(num_frames, 3, 3)``.
        """
        if num_frames < 1:
            raise ValueError(f"Cameras.identity: num_frames must be >= 1, got {num_frames}")
        K = K.expand(num_frames, 3, 3).clone() if K.ndim == 2 else K
        c2w = torch.eye(4, dtype=K.dtype, device=K.device).expand(num_frames, 4, 4).clone()
        return cls(K, c2w, width, height)

    @classmethod
    def cat(cls, cameras: Sequence[Cameras]) -> Cameras:
        """Concatenate along frames (same image size required; dtype/device of the first)."""
        if len(cameras) == 0:
            raise ValueError("Cameras.cat: need at least one Cameras, got an empty list")
        first = cameras[0]
        for j, cam in enumerate(cameras):
            if (cam.width, cam.height) != (first.width, first.height):
                raise ValueError(f"Cameras.cat: item {j} has image size {cam.width}x{cam.height}, "
                                 f"item 0 has {first.width}x{first.height}")
        K = torch.cat([c.K.to(first.K) for c in cameras])
        c2w = torch.cat([c.c2w.to(first.c2w) for c in cameras])
        return cls(K, c2w, first.width, first.height)

    def _replace(self, **changes: object) -> Cameras:
        return dataclasses.replace(self, **changes)

    # -- indexing -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> Cameras:
        """Select frames; an int keeps the frame axis (returns a length-1 Cameras)."""
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"Cameras: frame index {index} out of range for "
                                 f"{len(self)} frames")
            index = slice(index % len(self), index % len(self) + 1)
        elif not isinstance(index, slice):
            index = torch.as_tensor(index, device=self.K.device)
            index = index[None] if index.ndim == 0 else index  # a scalar keeps the frame axis
            if index.dtype != torch.bool:
                index = index.long()
        return self._replace(K=self.K[index], c2w=self.c2w[index])

    def to(self, *args: object, **kwargs: object) -> Cameras:
        """Move/cast like ``Tensor.to`` (device and/or floating dtype)."""
        return self._replace(K=self.K.to(*args, **kwargs), c2w=self.c2w.to(*args, **kwargs))

    # -- extrinsics ---------------------------------------------------------------------------
    def world_to_camera(self) -> Tensor:
        """World-to-camera transforms ``(F, 4, 4)`` (inverse of c2w)."""
        return invert_rigid(self.c2w)

    def centers(self) -> Tensor:
        """Camera centres in world coordinates ``(F, 3)``."""
        return self.c2w[:, :3, 3]

    def rotations(self) -> Tensor:
        """Camera-to-world rotations ``(F, 3, 3)`` (columns: camera x, y, z axes in the world)."""
        return self.c2w[:, :3, :3]

    def relative_to(self, reference: int | Cameras) -> Cameras:
        """Express all cameras in the frame of a reference camera, which becomes the identity.

        reference: a frame index of self, or a length-1 Cameras.
        c2w_rel_i = inverse(c2w_ref) @ c2w_i (DESIGN.md "Geometry").
        """
        if isinstance(reference, Cameras):
            if len(reference) != 1:
                raise ValueError("Cameras.relative_to: reference must have 1 frame, "
                                 f"got {len(reference)}")
            ref = reference.c2w[0].to(self.c2w)
        else:
            ref = self[reference].c2w[0]
        return self._replace(c2w=invert_rigid(ref) @ self.c2w)

    # -- intrinsics ---------------------------------------------------------------------------
    def focal_lengths(self) -> Tensor:
        """``(F, 2)`` as (fx, fy) in pixels."""
        return torch.stack([self.K[:, 0, 0], self.K[:, 1, 1]], -1)

    def principal_points(self) -> Tensor:
        """``(F, 2)`` as (cx, cy) in pixels (pixel-centre convention: image centre = (W/2, H/2))."""
        return self.K[:, :2, 2]

    def _scaled(self, sx: float, sy: float, width: int | None, height: int | None) -> Cameras:
        K = self.K.clone()
        K[:, 0] *= sx  # fx, skew, cx
        K[:, 1] *= sy  # fy, cy
        return self._replace(K=K, width=width, height=height)

    def resize(self, height: int, width: int) -> Cameras:
        """Intrinsics for the image resized to ``height × width`` (needs the current size)."""
        if self.width is None or self.height is None:
            raise ValueError("Cameras.resize: the current image size is unknown; set width/height "
                             "or use scale_intrinsics")
        _check_size(width, height)
        return self._scaled(width / self.width, height / self.height, width, height)

    def scale_intrinsics(self, factor: float) -> Cameras:
        """Scale K's first two rows by ``factor`` (image scaled by ``factor``); the size follows.

        If the size is known, ``width·factor`` and ``height·factor`` must be whole numbers.
        """
        if not factor > 0:
            raise ValueError(f"Cameras.scale_intrinsics: factor must be > 0, got {factor}")
        width = height = None
        if self.width is not None and self.height is not None:
            w, h = self.width * factor, self.height * factor
            if abs(w - round(w)) > 1e-6 or abs(h - round(h)) > 1e-6:
                raise ValueError(f"Cameras.scale_intrinsics: {self.width}x{self.height} scaled by "
                                 f"{factor} is not a whole pixel size; use resize(height, width)")
            width, height = round(w), round(h)
        return self._scaled(factor, factor, width, height)

    def crop(self, top: int, left: int, height: int, width: int) -> Cameras:
        """Intrinsics for the crop ``[top, top+height) × [left, left+width)`` of the image."""
        _check_size(width, height)
        if self.width is not None and self.height is not None and (
            top < 0 or left < 0 or top + height > self.height or left + width > self.width
        ):
            raise ValueError(f"Cameras.crop: box top={top} left={left} {height}x{width} (h x w) is "
                             f"outside the {self.height}x{self.width} image")
        K = self.K.clone()
        K[:, 0, 2] -= left
        K[:, 1, 2] -= top
        return self._replace(K=K, width=width, height=height)

    # -- projection / interpolation ------------------------------------------------------------
    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points ``(N, 3)`` or ``(F, N, 3)``.

        Returns pixel coordinates ``(F, N, 2)`` and depths ``(F, N)``.
        """
        points = points.expand(len(self), *points.shape[-2:]) if points.ndim == 2 else points
        w2c = self.world_to_camera()
        cam = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # (F, N, 3)
        pix = cam @ self.K.transpose(1, 2)  # (F, N, 3) homogeneous pixels
        return pix[..., :2] / pix[..., 2:], cam[..., 2]

    def interpolate(self, times: Tensor, key_times: Tensor | None = None) -> Cameras:
        """Treat self as key cameras (at ``key_times``, default 0..F-1) and sample at ``times``."""
        if key_times is None:
            key_times = torch.arange(len(self), dtype=self.K.dtype, device=self.K.device)
        return interpolate_cameras(self, key_times, times)


def interpolate_cameras(keys: Cameras, key_times: Tensor, times: Tensor) -> Cameras:
    """Interpolate key cameras: slerp rotations, lerp centres and intrinsics (fx, fy, cx, cy).

    keys: F cameras; key_times ``(F,)`` strictly increasing; times ``(T,)`` within
    ``[key_times[0], key_times[-1]]``. Returns T cameras (image size of the keys).
    """
    dtype, device = keys.K.dtype, keys.K.device
    key_times = torch.as_tensor(key_times, dtype=dtype, device=device)
    times = torch.as_tensor(times, dtype=dtype, device=device).reshape(-1)
    if key_times.shape != (len(keys),):
        raise ValueError(f"interpolate_cameras: key_times must have shape ({len(keys)},), "
                         f"got {tuple(key_times.shape)}")
    if len(keys) > 1 and not bool((key_times[1:] > key_times[:-1]).all()):
        raise ValueError("interpolate_cameras: key_times must be strictly increasing")
    lo, hi = float(key_times[0]), float(key_times[-1])
    eps = 1e-9 * max(1.0, abs(lo), abs(hi))
    if len(times) == 0 or float(times.min()) < lo - eps or float(times.max()) > hi + eps:
        raise ValueError(f"interpolate_cameras: times must be non-empty and within [{lo}, {hi}]")
    if len(keys) == 1:
        return keys[torch.zeros(len(times), dtype=torch.long)]
    times = times.clamp(lo, hi)
    seg = (torch.searchsorted(key_times, times, right=True) - 1).clamp(0, len(keys) - 2)  # (T,)
    t0, t1 = key_times[seg], key_times[seg + 1]
    alpha = (times - t0) / (t1 - t0)  # (T,) in [0, 1]
    quat = matrix_to_quaternion(keys.rotations())  # (F, 4)
    R = quaternion_to_matrix(slerp(quat[seg], quat[seg + 1], alpha))  # (T, 3, 3)
    a = alpha[:, None]
    centers = (1 - a) * keys.centers()[seg] + a * keys.centers()[seg + 1]  # (T, 3)
    K = (1 - a[..., None]) * keys.K[seg] + a[..., None] * keys.K[seg + 1]  # (T, 3, 3)
    c2w = torch.eye(4, dtype=dtype, device=device).repeat(len(times), 1, 1)
    c2w[:, :3, :3], c2w[:, :3, 3] = R, centers
    return Cameras(K, c2w, keys.width, keys.height)


def intrinsics_from_fov(fov_deg: float, width: int, height: int,
                        dtype: torch.dtype | None = None) -> Tensor:
    """K ``(3, 3)`` for a horizontal field of view in degrees (square pixels, centred)."""
    if not 0 < fov_deg < 180:
        raise ValueError(f"intrinsics_from_fov: fov_deg must be in (0, 180), got {fov_deg}")
    _check_size(width, height)
    focal = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]],
                        dtype=dtype or torch.get_default_dtype())


def look_at(eye: Tensor, target: Tensor | Sequence[float], up: Sequence[float] = UP) -> Tensor:
    """Camera-to-world ``(F, 4, 4)`` of OpenCV cameras at ``eye (F, 3)`` looking at ``target``.

    target: ``(F, 3)`` or ``(3,)``. up: the world's up direction (default −y, OpenCV world);
    the camera's y axis (image down) is aligned with −up, so the horizon stays level.
    """
    eye = torch.as_tensor(eye)
    if eye.ndim != 2 or eye.shape[1] != 3:
        raise ValueError(f"look_at: eye must have shape (F, 3), got {tuple(eye.shape)}")
    target = torch.as_tensor(target, dtype=eye.dtype, device=eye.device).expand_as(eye)
    up_t = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    forward = target - eye  # camera z
    dist = forward.norm(dim=-1)
    if (i := _first(dist < 1e-9)) >= 0:
        raise ValueError(f"look_at: frame {i}: eye equals target ({eye[i].tolist()})")
    z = forward / dist[:, None]
    x = torch.linalg.cross(z, up_t)  # camera right = forward × up (x right, y down, z forward)
    if (i := _first(x.norm(dim=-1) < 1e-6 * up_t.norm(dim=-1))) >= 0:
        raise ValueError(f"look_at: frame {i}: viewing direction is parallel to up {list(up)}")
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(len(eye), 1, 1)
    c2w[:, :3, :3] = torch.stack([x, y, z], dim=-1)
    c2w[:, :3, 3] = eye
    return c2w
