"""Camera trajectory presets around a look-at target, their composition, and a ViewSweep sampler.

World (docs/cameras.md): OpenCV axes, metres, the subject's head centre at the origin, "up" = −y.
A camera at yaw 0, elevation 0 sits at ``(0, 0, −distance)`` looking along +z at the head.
Angles are in degrees:
  - yaw: rotation about the world y axis; positive yaw turns the camera's view to its right
    (+z towards +x), so an orbit by +90° moves the camera to ``(−distance, 0, 0)`` facing +x;
  - elevation: positive puts the camera above the head (y < 0), looking down;
  - pitch (``tilt``): positive looks up (camera pitch = −elevation on an orbit).
Every camera is upright (its x axis is horizontal); rotations are ``R = R_y(yaw) R_x(pitch)``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from factorportrait.geometry.cameras import Cameras, intrinsics_from_fov
from factorportrait.geometry.rotations import axis_angle_to_matrix, rotation_x, rotation_y

HEAD_CENTER = (0.0, 0.0, 0.0)  # metres; the default look-at target
DEFAULT_DISTANCE = 0.6  # metres from the target
DEFAULT_FOV_DEG = 40.0  # horizontal field of view of the default lens
DEFAULT_WIDTH, DEFAULT_HEIGHT = 512, 512
EASINGS = ("linear", "ease_in_out")


# -- easing and validation --------------------------------------------------------------------
def ease(t: Tensor, easing: str) -> Tensor:
    """Map progress ``t ∈ [0, 1]`` ``(N,)`` through an easing curve.

    ``linear``: t. ``ease_in_out``: (1 − cos πt)/2, zero velocity at both ends.
    """
    if easing == "linear":
        return t
    if easing == "ease_in_out":
        return 0.5 * (1 - torch.cos(math.pi * t))
    raise ValueError(f"unknown easing {easing!r}; valid choices: {', '.join(EASINGS)}")


def _progress(frames: int, easing: str, dtype: torch.dtype) -> Tensor:
    """Eased progress ``(frames,)`` from 0 (first frame) to 1 (last frame)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an int >= 1, got {frames!r}")
    return ease(torch.linspace(0, 1, frames, dtype=torch.float64), easing).to(dtype)


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _target(target: Sequence[float], dtype: torch.dtype) -> Tensor:
    out = torch.as_tensor(target, dtype=dtype)
    if out.shape != (3,) or not bool(torch.isfinite(out).all()):
        raise ValueError(f"target must be 3 finite numbers (x, y, z) in metres, got {target!r}")
    return out


# -- building blocks --------------------------------------------------------------------------
def upright_rotation(yaw_deg: Tensor, pitch_deg: Tensor) -> Tensor:
    """Camera-to-world rotations ``(N, 3, 3)`` = R_y(yaw) R_x(pitch) of an upright camera."""
    return rotation_y(torch.deg2rad(yaw_deg)) @ rotation_x(torch.deg2rad(pitch_deg))


def _cameras(R: Tensor, centers: Tensor, K: Tensor, width: int | None,
             height: int | None) -> Cameras:
    """Cameras from rotations ``(N, 3, 3)``, centres ``(N, 3)``, K ``(3, 3)`` or ``(N, 3, 3)``."""
    c2w = torch.eye(4, dtype=R.dtype).repeat(len(R), 1, 1)
    c2w[:, :3, :3], c2w[:, :3, 3] = R, centers
    K = K.expand(len(R), 3, 3).clone() if K.ndim == 2 else K
    return Cameras(K, c2w, width, height)


def orbit_cameras(yaw_deg: Tensor, elevation_deg: Tensor, distance: Tensor, target: Tensor,
                  K: Tensor, width: int | None = None, height: int | None = None) -> Cameras:
    """Upright cameras on a sphere around ``target (3,)``, looking at it.

    yaw_deg, elevation_deg, distance: ``(N,)``; K: ``(3, 3)`` or ``(N, 3, 3)``.
    """
    R = upright_rotation(yaw_deg, -elevation_deg)  # (N, 3, 3); looking down: pitch = −elevation
    centers = target - distance[:, None] * R[:, :, 2]  # the optical axis passes through the target
    return _cameras(R, centers, K, width, height)


def view_angles(cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Yaw and pitch in degrees (``(F,)`` each) of the viewing directions (see module doc)."""
    forward = cameras.rotations()[:, :, 2]  # (F, 3)
    yaw = torch.rad2deg(torch.atan2(forward[:, 0], forward[:, 2]))
    pitch = torch.rad2deg(torch.atan2(-forward[:, 1], forward[:, [0, 2]].norm(dim=-1)))
    return yaw, pitch


Span = tuple[float, float]  # (start, end) of a swept quantity


def _path(frames: int, easing: str, dtype: torch.dtype | None, yaw: Span, elevation: Span,
          distance: Span, target: Sequence[float], fov_deg: float, width: int, height: int,
          focal: Span | None = None) -> Cameras:
    """Cameras looking at ``target`` while yaw, elevation, distance (and focal) are eased from
    start to end; ``focal=None`` keeps the ``fov_deg`` lens."""
    dtype = dtype or torch.get_default_dtype()
    s = _progress(frames, easing, dtype)  # (N,) in [0, 1]

    def lerp(span: Span) -> Tensor:
        return span[0] + (span[1] - span[0]) * s

    K = intrinsics_from_fov(fov_deg, width, height, dtype).repeat(frames, 1, 1)
    if focal is not None:
        K[:, 0, 0] = K[:, 1, 1] = lerp(focal)
    dist = lerp((_positive("distance", distance[0]), _positive("end_distance", distance[1])))
    return orbit_cameras(lerp(yaw), lerp(elevation), dist, _target(target, dtype), K, width, height)


# -- presets ----------------------------------------------------------------------------------
def orbit(frames: int, degrees: float = 360.0, *, yaw_deg: float = 0.0,
          elevation_deg: float = 0.0, distance: float = DEFAULT_DISTANCE,
          target: Sequence[float] = HEAD_CENTER, easing: str = "linear",
          fov_deg: float = DEFAULT_FOV_DEG, width: int = DEFAULT_WIDTH,
          height: int = DEFAULT_HEIGHT, dtype: torch.dtype | None = None) -> Cameras:
    """Yaw sweep from ``yaw_deg`` to ``yaw_deg + degrees`` around the target. 360 is a full
    spin whose last frame equals the first (use ``360·(N−1)/N`` for a seamless loop)."""
    return _path(frames, easing, dtype, (yaw_deg, yaw_deg + degrees), (elevation_deg,) * 2,
                 (distance,) * 2, target, fov_deg, width, height)


def spiral(frames: int, degrees: float = 360.0, end_elevation_deg: float = 15.0,
           end_distance: float | None = None, *, yaw_deg: float = 0.0,
           elevation_deg: float = 0.0, distance: float = DEFAULT_DISTANCE,
           target: Sequence[float] = HEAD_CENTER, easing: str = "linear",
           fov_deg: float = DEFAULT_FOV_DEG, width: int = DEFAULT_WIDTH,
           height: int = DEFAULT_HEIGHT, dtype: torch.dtype | None = None) -> Cameras:
    """Yaw sweep by ``degrees`` while the elevation goes to ``end_elevation_deg`` and the
    distance to ``end_distance`` (default: unchanged): a conical helix around the target."""
    end_distance = distance if end_distance is None else end_distance
    return _path(frames, easing, dtype, (yaw_deg, yaw_deg + degrees),
                 (elevation_deg, end_elevation_deg), (distance, end_distance), target, fov_deg,
                 width, height)


def arc(frames: int, degrees: float = 30.0, *, yaw_deg: float = 0.0, elevation_deg: float = 0.0,
        distance: float = DEFAULT_DISTANCE, target: Sequence[float] = HEAD_CENTER,
        easing: str = "linear", fov_deg: float = DEFAULT_FOV_DEG, width: int = DEFAULT_WIDTH,
        height: int = DEFAULT_HEIGHT, dtype: torch.dtype | None = None) -> Cameras:
    """Elevation sweep from ``elevation_deg`` to ``elevation_deg + degrees`` (positive: rise
    over the head, looking down)."""
    return _path(frames, easing, dtype, (yaw_deg,) * 2, (elevation_deg, elevation_deg + degrees),
                 (distance,) * 2, target, fov_deg, width, height)


def dolly(frames: int, end_distance: float = 0.4, *, yaw_deg: float = 0.0,
          elevation_deg: float = 0.0, distance: float = DEFAULT_DISTANCE,
          target: Sequence[float] = HEAD_CENTER, easing: str = "linear",
          fov_deg: float = DEFAULT_FOV_DEG, width: int = DEFAULT_WIDTH,
          height: int = DEFAULT_HEIGHT, dtype: torch.dtype | None = None) -> Cameras:
    """Move along the viewing axis from ``distance`` to ``end_distance`` metres from the target."""
    return _path(frames, easing, dtype, (yaw_deg,) * 2, (elevation_deg,) * 2,
                 (distance, end_distance), target, fov_deg, width, height)


def zoom(frames: int, end_focal: float | None = None, *, yaw_deg: float = 0.0,
         elevation_deg: float = 0.0, distance: float = DEFAULT_DISTANCE,
         target: Sequence[float] = HEAD_CENTER, easing: str = "linear",
         fov_deg: float = DEFAULT_FOV_DEG, width: int = DEFAULT_WIDTH,
         height: int = DEFAULT_HEIGHT, dtype: torch.dtype | None = None) -> Cameras:
    """Fixed camera; the focal length (fx = fy, pixels) goes from the ``fov_deg`` lens's to
    ``end_focal`` (default 1.5× the start: zoom in). The principal point stays centred."""
    start = float(intrinsics_from_fov(fov_deg, width, height, torch.float64)[0, 0])
    end = _positive("end_focal", 1.5 * start if end_focal is None else end_focal)
    return _path(frames, easing, dtype, (yaw_deg,) * 2, (elevation_deg,) * 2, (distance,) * 2,
                 target, fov_deg, width, height, focal=(start, end))


def static(frames: int, *, yaw_deg: float = 0.0, elevation_deg: float = 0.0,
           distance: float = DEFAULT_DISTANCE, target: Sequence[float] = HEAD_CENTER,
           fov_deg: float = DEFAULT_FOV_DEG, width: int = DEFAULT_WIDTH,
           height: int = DEFAULT_HEIGHT, dtype: torch.dtype | None = None) -> Cameras:
    """A fixed (novel) view of the target from (yaw, elevation, distance), ``frames`` times."""
    return _path(frames, "linear", dtype, (yaw_deg,) * 2, (elevation_deg,) * 2, (distance,) * 2,
                 target, fov_deg, width, height)


def pan(frames: int, degrees: float = 30.0, *, yaw_deg: float = 0.0, elevation_deg: float = 0.0,
        distance: float = DEFAULT_DISTANCE, target: Sequence[float] = HEAD_CENTER,
        easing: str = "linear", fov_deg: float = DEFAULT_FOV_DEG, width: int = DEFAULT_WIDTH,
        height: int = DEFAULT_HEIGHT, dtype: torch.dtype | None = None) -> Cameras:
    """Turn in place about the world vertical by ``degrees`` (positive: look right), starting
    from the view of ``target`` at (yaw, elevation, distance)."""
    start = static(1, yaw_deg=yaw_deg, elevation_deg=elevation_deg, distance=distance,
                   target=target, fov_deg=fov_deg, width=width, height=height, dtype=dtype)
    return _rotate_in_place(start, frames, easing, (yaw_deg, yaw_deg + degrees),
                            (-elevation_deg,) * 2)


def tilt(frames: int, degrees: float = 15.0, *, yaw_deg: float = 0.0, elevation_deg: float = 0.0,
         distance: float = DEFAULT_DISTANCE, target: Sequence[float] = HEAD_CENTER,
         easing: str = "linear", fov_deg: float = DEFAULT_FOV_DEG, width: int = DEFAULT_WIDTH,
         height: int = DEFAULT_HEIGHT, dtype: torch.dtype | None = None) -> Cameras:
    """Pitch in place by ``degrees`` (positive: look up), starting from the view of ``target``."""
    start = static(1, yaw_deg=yaw_deg, elevation_deg=elevation_deg, distance=distance,
                   target=target, fov_deg=fov_deg, width=width, height=height, dtype=dtype)
    return _rotate_in_place(start, frames, easing, (yaw_deg,) * 2,
                            (-elevation_deg, -elevation_deg + degrees))


def _rotate_in_place(start: Cameras, frames: int, easing: str, yaw: Span, pitch: Span) -> Cameras:
    """Keep ``start``'s centre and lens; eased yaw/pitch spans in degrees."""
    s = _progress(frames, easing, start.K.dtype)
    R = upright_rotation(yaw[0] + (yaw[1] - yaw[0]) * s, pitch[0] + (pitch[1] - pitch[0]) * s)
    return _cameras(R, start.centers().expand(frames, 3), start.K[0], start.width, start.height)


# -- composition ------------------------------------------------------------------------------
def sequence(*trajectories: Cameras) -> Cameras:
    """Play trajectories one after another (frames concatenated)."""
    if not trajectories:
        raise ValueError("sequence: give at least one trajectory")
    return Cameras.cat(list(trajectories))


def hold(cameras: Cameras, frames: int) -> Cameras:
    """The last camera of ``cameras`` repeated ``frames`` times (append with :func:`sequence`)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"hold: frames must be an int >= 1, got {frames!r}")
    return cameras[torch.full((frames,), len(cameras) - 1, dtype=torch.long)]


def reverse(cameras: Cameras) -> Cameras:
    """The trajectory played backwards."""
    return cameras[torch.arange(len(cameras) - 1, -1, -1)]


def jitter(cameras: Cameras, rotation_deg: float = 0.5, translation_m: float = 0.005,
           seed: int = 0) -> Cameras:
    """Add seeded i.i.d. Gaussian shake: each axis-angle component (camera frame) has standard
    deviation ``rotation_deg`` and each centre coordinate ``translation_m``."""
    for name, value in (("rotation_deg", rotation_deg), ("translation_m", translation_m)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"jitter: {name} must be a finite number >= 0, got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(cameras), 6, generator=generator, dtype=torch.float64)
    delta_R = axis_angle_to_matrix(noise[:, :3] * math.radians(rotation_deg)).to(cameras.K)
    c2w = cameras.c2w.clone()
    c2w[:, :3, :3] = cameras.rotations() @ delta_R  # rotate about the camera's own centre
    c2w[:, :3, 3] += (noise[:, 3:] * translation_m).to(cameras.K)
    return Cameras(cameras.K, c2w, cameras.width, cameras.height)


# -- registry ---------------------------------------------------------------------------------
TRAJECTORY_PRESETS: dict[str, Callable[..., Cameras]] = {
    "orbit": orbit, "spiral": spiral, "arc": arc, "dolly": dolly, "zoom": zoom,
    "pan": pan, "tilt": tilt, "static": static,
}


def make_trajectory(name: str, **params: object) -> Cameras:
    """Build a preset by name, e.g. ``make_trajectory("orbit", frames=49, degrees=90)``."""
    if name not in TRAJECTORY_PRESETS:
        raise ValueError(f"unknown trajectory preset {name!r}; "
                         f"valid choices: {', '.join(TRAJECTORY_PRESETS)}")
    preset = TRAJECTORY_PRESETS[name]
    valid = list(inspect.signature(preset).parameters)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"trajectory preset {name!r} has no parameter(s) {unknown}; "
                         f"valid choices: {', '.join(valid)}")
    if "frames" not in params:
        raise ValueError(f"trajectory preset {name!r} needs frames=<int >= 1>")
    signature = inspect.signature(preset).parameters
    for key, value in params.items():
        default = signature[key].default
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if (numeric or key == "frames") and (isinstance(value, bool) or not isinstance(
                value, (int, float)) or not math.isfinite(value)):
            raise ValueError(f"trajectory preset {name!r}: {key} must be a number, got "
                             f"{value!r}")
    return preset(**params)


# -- ViewSweep sampler (FactorPortrait supp. §7.3) -------------------------------------------
VIEWSWEEP_KINDS = ("spin", "spiral")


def _uniform(generator: torch.Generator | None, low: float, high: float, *shape: int) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _catmull_rom(points: Tensor, t: Tensor) -> Tensor:
    """Uniform Catmull–Rom curve through ``points (P, D)`` (clamped ends) at ``t (N,)`` ∈ [0, 1]."""
    padded = torch.cat([points[:1], points, points[-1:]])  # (P + 2, D)
    x = t * (len(points) - 1)
    seg = x.floor().long().clamp(max=len(points) - 2)  # (N,)
    s = (x - seg)[:, None]
    p0, p1, p2, p3 = padded[seg], padded[seg + 1], padded[seg + 2], padded[seg + 3]
    return 0.5 * (2 * p1 + (p2 - p0) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s**2
                  + (3 * p1 - p0 - 3 * p2 + p3) * s**3)


def sample_viewsweep(num_frames: int, seed: int | torch.Generator | None = None,
                     kind: str | None = None,
                     distance_range: tuple[float, float] = (0.25, 0.40),
                     max_elevation_deg: float = 5.0, spiral_yaw_deg: float = 90.0,
                     spiral_elevation_deg: float = 15.0, target_jitter_m: float = 0.02,
                     fov_deg: float = 72.0, width: int = 1024, height: int = 1024,
                     dtype: torch.dtype | None = None) -> Cameras:
    """A random ViewSweep-style camera path (FactorPortrait supp. §7.3) looking at a point
    within ``target_jitter_m`` of the head centre.

    ``spin``: a full turn (no repeated frame) on an oval with radii in ``distance_range`` and at
    most ``max_elevation_deg`` of elevation. ``spiral``: a smooth Catmull–Rom curve through 4
    random (yaw ∈ ±spiral_yaw_deg, elevation ∈ ±spiral_elevation_deg, distance) seeds.
    ``kind=None`` picks either with equal odds. Default lens: 72° field of view at 1024², the
    paper's renders. ``seed``: an int, a ``torch.Generator``, or None (global RNG).
    """
    if kind is not None and kind not in VIEWSWEEP_KINDS:
        raise ValueError(f"sample_viewsweep: unknown kind {kind!r}; "
                         f"valid choices: {', '.join(VIEWSWEEP_KINDS)}, None")
    near, far = (_positive("distance_range", d) for d in distance_range)
    if near > far:
        raise ValueError("sample_viewsweep: distance_range must be (near, far) with near <= far, "
                         f"got {distance_range}")
    _progress(num_frames, "linear", torch.float64)  # validates num_frames
    gen = torch.Generator().manual_seed(seed) if isinstance(seed, int) else seed
    if kind is None:
        kind = VIEWSWEEP_KINDS[int(torch.randint(2, (1,), generator=gen))]
    target = _uniform(gen, -target_jitter_m, target_jitter_m, 3)
    t = torch.arange(num_frames, dtype=torch.float64)
    if kind == "spin":
        yaw, elevation, dist = _spin(gen, t / num_frames, near, far, max_elevation_deg)
    else:
        seeds = torch.stack([_uniform(gen, -spiral_yaw_deg, spiral_yaw_deg, 4),
                             _uniform(gen, -spiral_elevation_deg, spiral_elevation_deg, 4),
                             _uniform(gen, near, far, 4)], -1)  # (4, 3) seed locations
        curve = _catmull_rom(seeds, t / max(num_frames - 1, 1))  # (N, 3)
        yaw = curve[:, 0].clamp(-spiral_yaw_deg, spiral_yaw_deg)
        elevation, dist = curve[:, 1], curve[:, 2].clamp(near, far)
    K = intrinsics_from_fov(fov_deg, width, height, torch.float64)
    cams = orbit_cameras(yaw, elevation, dist, target, K, width, height)
    return cams.to(dtype or torch.get_default_dtype())


def _spin(gen: torch.Generator | None, turn: Tensor, near: float, far: float,
          max_elevation_deg: float) -> tuple[Tensor, Tensor, Tensor]:
    """Yaw, elevation (degrees) and distance ``(N,)`` of one random spin; ``turn`` ∈ [0, 1)."""
    start = float(_uniform(gen, 0, 360))
    direction = 1.0 if float(_uniform(gen, 0, 1)) < 0.5 else -1.0
    yaw = start + direction * 360.0 * turn  # (N,)
    a, b = _uniform(gen, near, far, 2).tolist()  # oval radii
    phase, tilt_phase = _uniform(gen, 0, 360, 2).tolist()
    theta = torch.deg2rad(yaw - phase)
    # the oval in polar form: r(θ) = ab / sqrt((b cos θ)² + (a sin θ)²)
    dist = a * b / ((b * torch.cos(theta)) ** 2 + (a * torch.sin(theta)) ** 2).sqrt()
    base = float(_uniform(gen, -0.5, 0.5)) * max_elevation_deg
    wobble = float(_uniform(gen, 0, 0.5)) * max_elevation_deg  # |base| + wobble <= max
    elevation = base + wobble * torch.sin(torch.deg2rad(yaw - tilt_phase))
    return yaw, elevation, dist
