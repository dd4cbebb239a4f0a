"""The head surface of the procedural avatar: a deformed ellipsoid with eye sockets, brows,
nose, lips, chin and a hair volume, plus its vertex colours and jaw skinning weights.

Anatomical frame: x = subject's left, y up, z forward (the face looks along +z), metres, head
centre at the origin. The surface is a latitude-longitude grid (poles on the y axis) whose
rows include the mouth seam, so opening the jaw parts the lips along a mesh row.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from factorportrait.body.avatar_identity import AvatarIdentity
from factorportrait.body.avatar_primitives import direction, lat_long_surface

HEAD_ROWS = (10, 36, 6)  # rings on the crown, the face band and under the chin
HEAD_COLUMNS = 72
FACE_BAND = (math.radians(52.0), math.radians(140.0))  # polar range of the dense band
MOUTH_DARK = (0.22, 0.05, 0.06)


def smoothstep(edge0: float | torch.Tensor, edge1: float | torch.Tensor, x: torch.Tensor
               ) -> torch.Tensor:
    """0 at ``edge0``, 1 at ``edge1`` (either order), cubic in between."""
    t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def bump(points: torch.Tensor, center: torch.Tensor, radii: tuple[float, float, float]
         ) -> torch.Tensor:
    """Compactly supported bump ``(1 - r^2)^2`` of the anisotropic distance
    ``r = |(p - c) / radii|``; exactly 0 for ``r >= 1``. ``points (V, 3)`` -> ``(V,)``."""
    r2 = (((points - center) / points.new_tensor(radii)) ** 2).sum(-1)
    return (1.0 - r2).clamp_min(0.0) ** 2


class HeadLayout(NamedTuple):
    """Feature heights and anchors of a head (anatomical frame, metres)."""

    eye_y: float
    brow_y: float
    nose_tip_y: float
    mouth_y: float
    chin_y: float
    ear_y: float
    eye_centers: torch.Tensor  # (2, 3) left (+x) then right
    ear_centers: torch.Tensor  # (2, 3)


class HeadSurface(NamedTuple):
    verts: torch.Tensor  # (V, 3)
    faces: torch.Tensor  # (M, 3)
    colors: torch.Tensor  # (V, 3)
    jaw_weight: torch.Tensor  # (V,) in [0, 1]
    layout: HeadLayout


def _base_point(identity: AvatarIdentity, theta: torch.Tensor, phi: torch.Tensor
                ) -> torch.Tensor:
    """The skull before features: an ellipsoid with a squarer, tapering jaw, a lifted jaw
    line under the chin and a narrower nape. ``theta, phi (N,)`` -> ``(N, 3)``."""
    d = direction(theta, phi)
    p = d * torch.tensor([identity.head_width, identity.head_height, identity.head_depth])
    lower = smoothstep(0.0, -0.95 * identity.head_height, p[:, 1])
    front = smoothstep(0.2, 0.8, d[:, 2])
    squarer = d[:, 0].sign() * d[:, 0].abs().pow(1.0 - 0.3 * lower)
    x = identity.head_width * squarer * (1.0 - (1.0 - identity.jaw_width) * lower)
    y = p[:, 1] * (1.0 - 0.22 * lower * (1.0 - smoothstep(-0.3, 0.7, d[:, 2])))
    back = smoothstep(0.0, -0.5, d[:, 2])
    depth = 1.0 - 0.35 * lower * back + 0.05 * back * smoothstep(-0.2, 0.6, d[:, 1])
    depth = depth - 0.08 * front * d[:, 0] ** 2  # flatter face
    depth = depth + 0.4 * lower * smoothstep(0.0, 0.8, d[:, 2])  # jaw and chin forward
    return torch.stack([x, y, p[:, 2] * depth], -1)


def surface_anchor(identity: AvatarIdentity, x: float, y: float, side: float = 1.0
                   ) -> torch.Tensor:
    """Point of the base skull at height ``y`` (exact on the face) nearest to lateral
    position ``x`` on the front (``side`` +1) or back (-1): ``(3,)``."""
    theta = math.acos(max(-0.999, min(0.999, y / identity.head_height)))
    phi = torch.linspace(-math.pi / 2, math.pi / 2, 1441)
    if side < 0:
        phi = math.pi - phi
    points = _base_point(identity, torch.full_like(phi, theta), phi)
    return points[(points[:, 0] - x).abs().argmin()]


def skull_normal(identity: AvatarIdentity, points: torch.Tensor) -> torch.Tensor:
    """Approximate outward unit normals of the skull at ``points (N, 3)``."""
    radii = torch.tensor([identity.head_width, identity.head_height, identity.head_depth])
    return torch.nn.functional.normalize(points / radii**2, dim=-1)


def head_layout(identity: AvatarIdentity) -> HeadLayout:
    """Feature positions derived from the identity."""
    eye_y = 0.004
    nose_tip_y = eye_y - identity.nose_length
    mouth_y = nose_tip_y - 0.021
    eyes = []
    for side in (1.0, -1.0):
        anchor = surface_anchor(identity, side * identity.eye_spacing, eye_y)
        normal = skull_normal(identity, anchor[None])[0]
        eyes.append(anchor - normal * 1.05 * identity.eye_radius)
    ear_y = eye_y - 0.014
    ears = []
    for side in (1.0, -1.0):
        theta = math.acos(ear_y / identity.head_height)
        side_point = _base_point(identity, torch.tensor([theta]),
                                 torch.tensor([side * math.pi / 2]))[0]
        ears.append(side_point + torch.tensor([side * 0.004, 0.0, -0.010]))
    return HeadLayout(eye_y=eye_y, brow_y=eye_y + 0.021, nose_tip_y=nose_tip_y,
                      mouth_y=mouth_y, chin_y=-0.86 * identity.head_height, ear_y=ear_y,
                      eye_centers=torch.stack(eyes), ear_centers=torch.stack(ears))


def head_angles(identity: AvatarIdentity, layout: HeadLayout
                ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Polar rows ``(R,)`` (dense over the face, with three rows at the mouth seam), azimuth
    columns ``(C,)`` (denser at the front, symmetric, including 0) and the seam angle."""
    crown, band, chin = HEAD_ROWS
    low, high = FACE_BAND
    rows = torch.cat([torch.linspace(0, low, crown + 1)[1:-1], torch.linspace(low, high, band),
                      torch.linspace(high, math.pi, chin + 2)[1:-1]])
    seam = math.acos(layout.mouth_y / identity.head_height)
    spacing = (high - low) / (band - 1)
    rows = rows[(rows - seam).abs() > 0.8 * spacing]
    seam_rows = torch.tensor([seam - 0.45 * spacing, seam, seam + 0.45 * spacing])
    rows = torch.sort(torch.cat([rows, seam_rows])).values
    s = torch.linspace(-math.pi, math.pi, HEAD_COLUMNS + 1)[:-1]
    columns = s - 0.55 * torch.sin(s)  # twice as dense at the front (s = 0)
    return rows, columns, seam


def _features(identity: AvatarIdentity, layout: HeadLayout, p: torch.Tensor,
              d: torch.Tensor) -> torch.Tensor:
    """Displace skull points ``p (V, 3)`` (directions ``d``) by the facial features."""
    n = skull_normal(identity, p)
    forward = p.new_tensor([0.0, 0.0, 1.0])
    out = p.clone()
    r_eye = identity.eye_radius
    for side, eye in zip((1.0, -1.0), layout.eye_centers):
        socket = surface_anchor(identity, side * identity.eye_spacing, layout.eye_y)
        socket_radii = (2.1 * r_eye, 1.7 * r_eye, 2.5 * r_eye)
        out -= n * (0.6 * r_eye * bump(p, socket, socket_radii))[:, None]
        brow = surface_anchor(identity, side * (identity.eye_spacing + 0.002), layout.brow_y)
        out += forward * (0.005 * bump(p, brow, (0.026, 0.011, 0.03)))[:, None]
        cheek = surface_anchor(identity, side * 0.042, layout.eye_y - 0.026)
        out += n * (0.004 * bump(p, cheek, (0.03, 0.025, 0.04)))[:, None]
        wing = surface_anchor(identity, side * identity.nose_width * 1.1, layout.nose_tip_y + 0.005)
        out += n * (0.006 * bump(p, wing, (0.008, 0.007, 0.02)))[:, None]
    out += forward * (identity.nose_protrusion * _nose_profile(identity, layout, p, d))[:, None]
    lips = surface_anchor(identity, 0.0, layout.mouth_y)
    out += forward * (identity.lip_fullness
                      * bump(p, lips, (identity.mouth_width * 1.2, 0.014, 0.04)))[:, None]
    chin = surface_anchor(identity, 0.0, layout.chin_y)
    out += forward * (identity.chin_forward * bump(p, chin, (0.03, 0.022, 0.05)))[:, None]
    return out


def _nose_profile(identity: AvatarIdentity, layout: HeadLayout, p: torch.Tensor,
                  d: torch.Tensor) -> torch.Tensor:
    """Nose height field in [0, 1]: rises from the bridge to the tip, drops under it."""
    s = ((layout.eye_y - p[:, 1]) / identity.nose_length).clamp_min(0.0)
    rise = s.clamp(max=1.0) ** 1.4
    drop = (1.0 - ((layout.nose_tip_y - p[:, 1]) / 0.011).clamp(0.0, 1.0) ** 2) ** 2
    height = torch.where(s <= 1.0, rise, drop)
    width = identity.nose_width * (0.55 + 0.45 * s.clamp(max=1.0))
    lateral = (1.0 - (p[:, 0] / (1.9 * width)) ** 2).clamp_min(0.0) ** 2
    return height * lateral * smoothstep(0.75, 0.95, d[:, 2])


def hair_mask(identity: AvatarIdentity, d: torch.Tensor, p: torch.Tensor, softness: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V,)`` in [0, 1]: how much of each skull point is covered by hair (colour: a sharp
    line; volume: a ramp of ``softness`` metres that starts where the colour does)."""
    nape = -0.025 - 0.085 * identity.hair_length
    front = smoothstep(-0.1, 0.75, d[:, 2])
    line = nape + (identity.hairline - nape) * front
    line = line - 0.012 * (1.0 - (2.0 * front - 1.0).abs())  # sideburns / temples
    color = smoothstep(line - 0.010, line + 0.006, p[:, 1])
    return color, smoothstep(line - 0.002, line + softness, p[:, 1])


def build_head(identity: AvatarIdentity) -> HeadSurface:
    """Head surface with colours and jaw weights (anatomical frame)."""
    layout = head_layout(identity)
    rows, columns, seam = head_angles(identity, layout)
    verts, faces, params = lat_long_surface(rows, columns,
                                            lambda t, p: _base_point(identity, t, p))
    d = direction(params[:, 0], params[:, 1])
    skull = verts
    verts = _features(identity, layout, skull, d)
    hair, volume = hair_mask(identity, d, skull, softness=0.5 * identity.hair_volume + 0.01)
    top = smoothstep(-0.02, identity.head_height, skull[:, 1])
    verts = verts + skull_normal(identity, skull) * (identity.hair_volume * volume
                                                 * (0.55 + 0.45 * top))[:, None]
    seam_row = (params[:, 0] - seam).abs() < 1e-6
    mouth = smoothstep(1.0, 0.75, (verts[:, 0] / identity.mouth_width).abs()) \
        * smoothstep(0.5, 0.8, d[:, 2])
    verts = verts - skull_normal(identity, skull) * (0.008 * mouth * seam_row)[:, None]
    jaw = _jaw_weight(layout, params[:, 0], seam, verts, d, mouth)
    colors = _head_colors(identity, layout, verts, d, hair, seam_row, mouth)
    return HeadSurface(verts, faces, colors, jaw, layout)


def _jaw_weight(layout: HeadLayout, theta: torch.Tensor, seam: float, verts: torch.Tensor,
                d: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
    """Jaw skinning weight: 1 below the lips, 0.5 on the seam, fading towards the ears."""
    hard = torch.where(theta > seam + 1e-6, 1.0, torch.where(theta < seam - 1e-6, 0.0, 0.5))
    soft = smoothstep(layout.mouth_y + 0.004, layout.mouth_y - 0.03, verts[:, 1])
    vertical = mouth * hard + (1.0 - mouth) * soft
    return vertical * smoothstep(-0.15, 0.35, d[:, 2])


def _head_colors(identity: AvatarIdentity, layout: HeadLayout, verts: torch.Tensor,
                 d: torch.Tensor, hair: torch.Tensor, seam_row: torch.Tensor,
                 mouth: torch.Tensor) -> torch.Tensor:
    """Skin with blush, lips, mouth line, nostrils, brows and hair: ``(V, 3)``."""
    skin = torch.tensor(identity.skin_color)
    colors = skin.expand(verts.shape[0], 3).clone()
    front = smoothstep(0.3, 0.6, d[:, 2])
    for side in (1.0, -1.0):
        cheek = surface_anchor(identity, side * 0.040, layout.mouth_y + 0.018)
        blush = 0.25 * bump(verts, cheek, (0.022, 0.018, 0.04))
        colors = _mix(colors, torch.tensor(identity.lip_color), blush)
        nostril = surface_anchor(identity, side * identity.nose_width * 0.55,
                                 layout.nose_tip_y - 0.006)
        colors = _mix(colors, skin * 0.35, 0.9 * bump(verts, nostril, (0.005, 0.004, 0.03)))
        center_x = side * (identity.eye_spacing + 0.003)
        arch = 0.004 * (1.0 - ((verts[:, 0] - center_x) / 0.021) ** 2).clamp_min(0.0)
        brow_y = layout.brow_y + 0.003 + arch
        across = ((verts[:, 0] - center_x) / 0.021) ** 2
        vertical = ((verts[:, 1] - brow_y) / identity.brow_thickness) ** 2
        brow = smoothstep(1.3, 0.5, across + vertical) * front
        colors = _mix(colors, torch.tensor(identity.hair_color) * 0.8, brow)
    dy = verts[:, 1] - layout.mouth_y
    lip_height = torch.where(dy > 0, 0.0075, 0.0095)
    lip = (verts[:, 0] / identity.mouth_width) ** 2 + (dy / lip_height) ** 2
    colors = _mix(colors, torch.tensor(identity.lip_color), smoothstep(1.0, 0.7, lip) * front)
    colors = _mix(colors, torch.tensor(MOUTH_DARK), mouth * seam_row)
    return _mix(colors, torch.tensor(identity.hair_color), hair)


def _mix(colors: torch.Tensor, target: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Blend ``colors (V, 3)`` towards ``target (3,)`` by ``amount (V,)`` in [0, 1]."""
    return colors + (target - colors) * amount.clamp(0.0, 1.0)[:, None]
