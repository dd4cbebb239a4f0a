"""Inference building blocks behind :class:`factorportrait.pipeline.FactorPortraitPipeline`.

- :mod:`~factorportrait.inference.control_track`: ``ControlTrack`` files (codes, pose, cameras).
- :mod:`~factorportrait.inference.controls`: control modes -> ``PortraitConditions``.
- :mod:`~factorportrait.inference.mesh_sources`: avatar / SMPL-X meshes -> normal maps.
- :mod:`~factorportrait.inference.encoders`: the expression-encoder protocol.
- :mod:`~factorportrait.inference.inputs`: step 1, input checks.
- :mod:`~factorportrait.inference.long_video`: sliding windows blended at every step.
- :mod:`~factorportrait.inference.loading`: checkpoint checks, VAE, umT5 text encoder.
- :mod:`~factorportrait.inference.preview`: a contact sheet of the conditions.
"""

from factorportrait.inference.control_track import (ControlTrack, load_control_track,
                                                    save_control_track)
from factorportrait.inference.controls import (CONTROL_MODES, MODE_FACTORS, ControlPlan,
                                               ModeFactors, assemble_conditions,
                                               default_reference_camera, plan_controls,
                                               plan_track, render_plan_normals)
from factorportrait.inference.encoders import ExpressionEncoder, encode_expressions
from factorportrait.inference.long_video import (LatentWindow, plan_windows, sample_windows,
                                                 window_conditions)
from factorportrait.inference.mesh_sources import (AvatarMeshSource, MeshSource,
                                                   SMPLXMeshSource, render_normal_maps)

__all__ = [
    "AvatarMeshSource", "CONTROL_MODES", "ControlPlan", "ControlTrack", "ExpressionEncoder",
    "LatentWindow", "MODE_FACTORS", "MeshSource", "ModeFactors", "SMPLXMeshSource",
    "assemble_conditions", "default_reference_camera", "encode_expressions",
    "load_control_track", "plan_controls", "plan_track", "plan_windows", "render_normal_maps",
    "render_plan_normals", "sample_windows", "save_control_track", "window_conditions",
]
