"""Mesh rendering: a pure-torch z-buffer rasteriser and normal / RGB / mask / depth maps.

``render(Meshes(verts, faces, colors), cameras, H, W)`` is the entry point; see
docs/rendering.md for conventions (OpenCV cameras, normal colour encoding, backgrounds).
"""

from factorportrait.render.fragments import Fragments
from factorportrait.render.normals import (
    OUTPUTS,
    MeshRenderer,
    Meshes,
    camera_tensors,
    render,
    world_to_camera,
)
from factorportrait.render.rasterizer import project_points, rasterize
from factorportrait.render.shading import (
    NORMAL_AXES,
    decode_normals,
    encode_normals,
    interpolate,
    vertex_normals,
)

__all__ = [
    "NORMAL_AXES",
    "OUTPUTS",
    "Fragments",
    "MeshRenderer",
    "Meshes",
    "camera_tensors",
    "decode_normals",
    "encode_normals",
    "interpolate",
    "project_points",
    "rasterize",
    "render",
    "vertex_normals",
    "world_to_camera",
]
