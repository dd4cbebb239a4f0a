"""Expression blendshapes of the procedural avatar.

Each expression is either a linear blendshape (per-vertex offsets on the neutral mesh, applied
before skinning) or drives a joint (``jaw_open`` rotates the jaw, ``blink_*`` an upper lid).
Every blendshape is a sum of compactly supported bumps, so it moves its own region exactly
and leaves every other vertex bit-for-bit unchanged.
"""

from __future__ import annotations

import math

import torch

from factorportrait.body.avatar_head import HeadLayout, bump, skull_normal, surface_anchor
from factorportrait.body.avatar_identity import AvatarIdentity
from factorportrait.body.avatar_mesh import ANATOMICAL_TO_WORLD, LID_OPEN, LOWER_LID_TOP, \
    PARTS, AvatarTemplate

EXPRESSION_NAMES = ("jaw_open", "smile", "lip_pucker", "brow_raise", "brow_frown",
                    "blink_left", "blink_right", "cheek_puff")
# Joint-driven expressions: name -> (joint, rotation about +x in radians at weight 1).
JOINT_EXPRESSIONS = {
    "jaw_open": ("jaw", math.radians(18.0)),
    "blink_left": ("left_lid", LID_OPEN - LOWER_LID_TOP + math.radians(4.0)),
    "blink_right": ("right_lid", LID_OPEN - LOWER_LID_TOP + math.radians(4.0)),
}


def blendshape_offsets(identity: AvatarIdentity, template: AvatarTemplate) -> torch.Tensor:
    """Per-expression vertex offsets in the world frame.

    Args:
        identity: the avatar's identity (feature sizes).
        template: its neutral mesh.

    Returns:
        ``(E, V, 3)`` offsets in metres, ordered as :data:`EXPRESSION_NAMES`; all zero for the
        joint-driven expressions.
    """
    p = template.verts @ ANATOMICAL_TO_WORLD  # back to the anatomical frame (A^-1 = A^T)
    layout = template.layout
    on_head = (template.part == PARTS.index("head")).float()[:, None]
    offsets = torch.zeros(len(EXPRESSION_NAMES), *p.shape)
    builders = {"smile": _smile, "lip_pucker": _pucker, "brow_raise": _brow_raise,
                "brow_frown": _brow_frown, "cheek_puff": _cheek_puff}
    for name, build in builders.items():
        offsets[EXPRESSION_NAMES.index(name)] = build(identity, layout, p) * on_head
    return offsets @ ANATOMICAL_TO_WORLD.T


def _vector(x: float, y: float, z: float) -> torch.Tensor:
    return torch.tensor([x, y, z])


def _smile(identity: AvatarIdentity, layout: HeadLayout, p: torch.Tensor) -> torch.Tensor:
    """Mouth corners up, back and out; cheeks lifted."""
    out = torch.zeros_like(p)
    for side in (1.0, -1.0):
        corner = surface_anchor(identity, side * identity.mouth_width, layout.mouth_y)
        weight = bump(p, corner, (0.02, 0.017, 0.04))
        out += weight[:, None] * _vector(side * 0.004, 0.008, -0.004)
        cheek = surface_anchor(identity, side * 0.038, layout.mouth_y + 0.02)
        out += bump(p, cheek, (0.022, 0.02, 0.04))[:, None] * _vector(0.0, 0.004, 0.002)
    return out


def _pucker(identity: AvatarIdentity, layout: HeadLayout, p: torch.Tensor) -> torch.Tensor:
    """Lips pushed forward and gathered towards the middle."""
    lips = surface_anchor(identity, 0.0, layout.mouth_y)
    weight = bump(p, lips, (identity.mouth_width * 1.5, 0.02, 0.04))[:, None]
    inward = torch.stack([-0.35 * p[:, 0], torch.zeros_like(p[:, 0]),
                          torch.full_like(p[:, 0], 0.009)], -1)
    return weight * inward


def _brow_raise(identity: AvatarIdentity, layout: HeadLayout, p: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(p)
    for side in (1.0, -1.0):
        brow = surface_anchor(identity, side * (identity.eye_spacing + 0.002), layout.brow_y)
        out += bump(p, brow, (0.03, 0.019, 0.04))[:, None] * _vector(0.0, 0.007, 0.001)
    return out


def _brow_frown(identity: AvatarIdentity, layout: HeadLayout, p: torch.Tensor) -> torch.Tensor:
    """Inner brows down and together."""
    out = torch.zeros_like(p)
    for side in (1.0, -1.0):
        inner = surface_anchor(identity, side * 0.014, layout.brow_y)
        out += bump(p, inner, (0.02, 0.015, 0.04))[:, None] * _vector(-side * 0.004, -0.005,
                                                                       0.002)
    return out


def _cheek_puff(identity: AvatarIdentity, layout: HeadLayout, p: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(p)
    normal = skull_normal(identity, p)
    for side in (1.0, -1.0):
        cheek = surface_anchor(identity, side * 0.042, layout.mouth_y + 0.008)
        out += bump(p, cheek, (0.028, 0.026, 0.045))[:, None] * normal * 0.009
    return out
