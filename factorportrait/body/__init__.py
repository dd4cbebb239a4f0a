"""Bodies and heads as triangle meshes: SMPL-X through the ``smplx`` package and a procedural
animatable head avatar (identity, expression blendshapes, linear blend skinning)."""

from factorportrait.body.avatar import EXPRESSION_NAMES, HeadAvatar, axis_angle_to_matrix
from factorportrait.body.avatar_identity import AvatarIdentity, sample_identity
from factorportrait.body.smplx_model import SMPLXBody, SMPLXOutput, write_synthetic_smplx_model

__all__ = [
    "EXPRESSION_NAMES",
    "AvatarIdentity",
    "HeadAvatar",
    "SMPLXBody",
    "SMPLXOutput",
    "axis_angle_to_matrix",
    "sample_identity",
    "write_synthetic_smplx_model",
]
