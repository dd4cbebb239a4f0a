"""Assembly of the avatar's neutral mesh: head surface, eyeballs, eyelids, ears, neck and a
clothed torso, with vertex colours, part labels and linear-blend-skinning weights.

Built in the anatomical frame (x = subject's left, y up, z forward) and converted by
:data:`ANATOMICAL_TO_WORLD` into the project's OpenCV world (y down, the face looking along
-z), so the head centre sits at the world origin.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from factorportrait.body.avatar_head import HeadLayout, build_head, smoothstep
from factorportrait.body.avatar_identity import AvatarIdentity
from factorportrait.body.avatar_primitives import axis_sphere, ellipsoid, grid_faces, \
    open_cylinder

# (x, y, z)_world = (x, -y, -z)_anatomical: a rotation by pi about x.
ANATOMICAL_TO_WORLD = torch.diag(torch.tensor([1.0, -1.0, -1.0]))

PARTS = ("head", "eye", "upper_lid", "lower_lid", "ear", "neck", "torso")
JOINTS = ("root", "neck", "head", "jaw", "left_lid", "right_lid")
JOINT_PARENTS = (-1, 0, 1, 2, 2, 2)
LID_OPEN = math.radians(16.0)  # polar elevation of the upper lid's edge above the gaze
LOWER_LID_TOP = math.radians(-30.0)
SCLERA = (0.93, 0.92, 0.88)
PUPIL = (0.03, 0.03, 0.035)
IRIS_ANGLE, PUPIL_ANGLE = 0.46, 0.2


class AvatarTemplate(NamedTuple):
    """Neutral avatar in the world frame (``V`` vertices, ``M`` faces, ``J`` joints)."""

    verts: torch.Tensor  # (V, 3) metres
    faces: torch.Tensor  # (M, 3) long, outward winding
    colors: torch.Tensor  # (V, 3) in [0, 1]
    part: torch.Tensor  # (V,) long index into PARTS
    side: torch.Tensor  # (V,) +1 on the subject's left (world +x), -1 right, 0 centre
    weights: torch.Tensor  # (V, J) skinning weights, rows sum to 1
    joints: torch.Tensor  # (J, 3) rest joint positions
    layout: HeadLayout  # anatomical-frame feature positions


class _Part(NamedTuple):
    verts: torch.Tensor
    faces: torch.Tensor
    colors: torch.Tensor
    weights: torch.Tensor
    part: str
    side: float


def _one_hot(count: int, joint: str) -> torch.Tensor:
    weights = torch.zeros(count, len(JOINTS))
    weights[:, JOINTS.index(joint)] = 1.0
    return weights


def _eye(identity: AvatarIdentity, center: torch.Tensor, side: float) -> _Part:
    """Eyeball looking forward (slightly outward): sclera, iris and pupil as rings."""
    axis = torch.tensor([side * math.sin(math.radians(4.0)), 0.0, 1.0])
    rings = torch.tensor([0.10, PUPIL_ANGLE - 0.02, PUPIL_ANGLE + 0.02, 0.33,
                          IRIS_ANGLE - 0.02, IRIS_ANGLE + 0.02, 0.7, 1.0, 1.4, 1.9, 2.4, 2.8])
    verts, faces, angle = axis_sphere(center, identity.eye_radius, axis / axis.norm(), rings, 20)
    colors = torch.where((angle < PUPIL_ANGLE)[:, None], torch.tensor(PUPIL),
                         torch.where((angle < IRIS_ANGLE)[:, None],
                                     torch.tensor(identity.eye_color), torch.tensor(SCLERA)))
    return _Part(verts, faces, colors, _one_hot(len(verts), "head"), "eye", side)


def _lid(identity: AvatarIdentity, center: torch.Tensor, side: float, upper: bool) -> _Part:
    """Spherical shell patch concentric with the eyeball; the upper lid blinks by rotating
    about the eye centre, its lowest row is a dark lash line."""
    radius = identity.eye_radius * (1.14 if upper else 1.10)
    if upper:
        elevation = torch.linspace(math.radians(88.0), LID_OPEN, 7)
    else:
        elevation = torch.linspace(LOWER_LID_TOP, math.radians(-88.0), 5)
    azimuth = torch.linspace(-math.radians(85.0), math.radians(85.0), 13)
    e, a = torch.meshgrid(elevation, azimuth, indexing="ij")
    local = torch.stack([a.sin() * e.cos(), e.sin(), a.cos() * e.cos()], -1).reshape(-1, 3)
    verts = center + radius * local
    faces = _outward_faces(verts, grid_faces(len(elevation), len(azimuth), wrap=False), center)
    skin = torch.tensor(identity.skin_color)
    colors = (skin * 0.93).expand(len(verts), 3).clone()
    if upper:
        colors[-len(azimuth):] = torch.tensor(identity.hair_color) * 0.4
    joint = ("left_lid" if side > 0 else "right_lid") if upper else "head"
    return _Part(verts, faces, colors, _one_hot(len(verts), joint),
                 "upper_lid" if upper else "lower_lid", side)


def _outward_faces(verts: torch.Tensor, faces: torch.Tensor, center: torch.Tensor
                   ) -> torch.Tensor:
    """``faces`` re-wound, if needed, so their normals point away from ``center``."""
    tri = verts[faces]
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    outward = (normal * (tri.mean(1) - center)).sum(-1).mean() > 0
    return faces if outward else faces[:, [0, 2, 1]]


def _ear(identity: AvatarIdentity, center: torch.Tensor, side: float) -> _Part:
    """Flattened ellipsoid on the side of the head, turned to face forward-outward."""
    verts, faces, _ = ellipsoid((0.0, 0.0, 0.0), (0.0065, identity.ear_size,
                                                  0.55 * identity.ear_size), 8, 14)
    angle = side * math.radians(28.0)  # rotate about y: the back edge sticks out
    rotation = torch.tensor([[math.cos(angle), 0.0, math.sin(angle)], [0.0, 1.0, 0.0],
                             [-math.sin(angle), 0.0, math.cos(angle)]])
    verts = verts @ rotation.T + center
    colors = (torch.tensor(identity.skin_color) * torch.tensor([1.0, 0.93, 0.9])).expand(
        len(verts), 3).clone()
    return _Part(verts, faces, colors, _one_hot(len(verts), "head"), "ear", side)


def _neck(identity: AvatarIdentity) -> _Part:
    """Open tube from inside the head to inside the torso, skinned root -> neck -> head."""
    verts, faces, height = open_cylinder((0.0, -0.02, -0.012), identity.neck_radius, 0.30,
                                         10, 32)
    to_root = 1.0 - smoothstep(0.05, 0.35, height)
    to_head = smoothstep(0.55, 0.85, height)
    weights = torch.zeros(len(verts), len(JOINTS))
    weights[:, JOINTS.index("root")] = to_root
    weights[:, JOINTS.index("head")] = to_head
    weights[:, JOINTS.index("neck")] = 1.0 - to_root - to_head
    colors = torch.tensor(identity.skin_color).expand(len(verts), 3).clone()
    return _Part(verts, faces, colors, weights, "neck", 0.0)


def _torso(identity: AvatarIdentity) -> _Part:
    """Boxy superellipsoid with sloping shoulders, clothing coloured, skin at the neckline."""
    center_y, half_height = -0.34, 0.17
    verts, faces, _ = ellipsoid((0.0, center_y, -0.015), (identity.shoulder_width, half_height,
                                                          0.12), 20, 40, exponent=0.45)
    upper = smoothstep(center_y, center_y + half_height, verts[:, 1])
    verts[:, 1] -= 0.09 * (verts[:, 0] / identity.shoulder_width) ** 2 * upper
    radial = torch.sqrt(verts[:, 0] ** 2 + (verts[:, 2] + 0.012) ** 2)
    neckline = smoothstep(identity.neck_radius * 1.6, identity.neck_radius * 1.3, radial) \
        * smoothstep(center_y + half_height - 0.06, center_y + half_height - 0.03, verts[:, 1])
    clothing, skin = torch.tensor(identity.clothing_color), torch.tensor(identity.skin_color)
    colors = clothing + (skin - clothing) * neckline[:, None]
    return _Part(verts, faces, colors, _one_hot(len(verts), "root"), "torso", 0.0)


def build_template(identity: AvatarIdentity) -> AvatarTemplate:
    """The neutral avatar of ``identity`` in the world frame."""
    head = build_head(identity)
    layout = head.layout
    jaw = head.jaw_weight
    head_weights = torch.zeros(len(head.verts), len(JOINTS))
    head_weights[:, JOINTS.index("jaw")] = jaw
    head_weights[:, JOINTS.index("head")] = 1.0 - jaw
    parts = [_Part(head.verts, head.faces, head.colors, head_weights, "head", 0.0)]
    for side, eye, ear in zip((1.0, -1.0), layout.eye_centers, layout.ear_centers):
        parts += [_eye(identity, eye, side), _lid(identity, eye, side, upper=True),
                  _lid(identity, eye, side, upper=False), _ear(identity, ear, side)]
    parts += [_neck(identity), _torso(identity)]
    verts, faces, offset = [], [], 0
    for part in parts:
        verts.append(part.verts)
        faces.append(part.faces + offset)
        offset += len(part.verts)
    verts = torch.cat(verts)
    side = torch.cat([torch.full((len(p.verts),), p.side) for p in parts])
    side = torch.where(side == 0, torch.sign(verts[:, 0]) * (verts[:, 0].abs() > 1e-6), side)
    joints = torch.stack([torch.tensor([0.0, -0.34, 0.0]), torch.tensor([0.0, -0.17, -0.012]),
                          torch.tensor([0.0, -0.08, -0.012]), torch.tensor([0.0, -0.012, -0.012]),
                          layout.eye_centers[0], layout.eye_centers[1]])
    return AvatarTemplate(
        verts=verts @ ANATOMICAL_TO_WORLD.T, faces=torch.cat(faces),
        colors=torch.cat([p.colors for p in parts]).clamp(0.0, 1.0),
        part=torch.cat([torch.full((len(p.verts),), PARTS.index(p.part)) for p in parts]),
        side=side, weights=torch.cat([p.weights for p in parts]),
        joints=joints @ ANATOMICAL_TO_WORLD.T, layout=layout)


def face_landmarks(identity: AvatarIdentity, template: AvatarTemplate
                   ) -> dict[str, torch.Tensor]:
    """Neutral world positions ``(3,)`` of a few facial landmarks of ``template``."""
    layout = template.layout
    anatomical = template.verts @ ANATOMICAL_TO_WORLD  # (A^-1 = A^T = A)
    on_head = template.part == PARTS.index("head")
    midline = on_head & (anatomical[:, 0].abs() < 1e-6) & (anatomical[:, 2] > 0)

    def midline_at(y: float) -> torch.Tensor:
        candidates = anatomical[midline]
        return candidates[(candidates[:, 1] - y).abs().argmin()]

    points = {
        "nose_tip": midline_at(layout.nose_tip_y), "mouth": midline_at(layout.mouth_y),
        "chin": midline_at(layout.chin_y),
        "crown": anatomical[on_head][anatomical[on_head][:, 1].argmax()]}
    gaze = torch.tensor([0.0, 0.0, identity.eye_radius])
    points["left_pupil"] = layout.eye_centers[0] + gaze
    points["right_pupil"] = layout.eye_centers[1] + gaze
    return {name: point @ ANATOMICAL_TO_WORLD.T for name, point in points.items()}
