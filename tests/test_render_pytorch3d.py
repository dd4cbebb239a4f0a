"""The optional pytorch3d backend agrees with the built-in rasteriser (skipped without it)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytorch3d", reason="pytorch3d is not installed (optional backend, "
                                        "pip install 'factorportrait[render3d]')")

from factorportrait.body.avatar_primitives import ellipsoid  # noqa: E402
from factorportrait.render import Meshes, decode_normals, render  # noqa: E402


@pytest.mark.parametrize("cull", [False, True])
def test_pytorch3d_backend_matches_torch_backend(cull):
    verts, faces, _ = ellipsoid((0.1, -0.05, 0.0), (1.0, 0.8, 0.9), 32, 64)
    K = torch.tensor([[90.0, 0.0, 48.0], [0.0, 90.0, 40.0], [0.0, 0.0, 1.0]])
    c2w = torch.eye(4)
    c2w[2, 3] = -3.0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    meshes = Meshes(verts.to(device), faces.to(device))
    cams = (K.to(device), c2w.to(device))
    ours = render(meshes, cams, 80, 96, cull_backfaces=cull)
    theirs = render(meshes, cams, 80, 96, backend="pytorch3d", cull_backfaces=cull)
    mask_ours, mask_theirs = ours["mask"] > 0, theirs["mask"] > 0
    assert (mask_ours != mask_theirs).float().mean() < 0.005
    both = (mask_ours & mask_theirs)[:, 0]
    cosine = (decode_normals(ours["normals"])[both] * decode_normals(theirs["normals"])[both])
    assert torch.rad2deg(torch.acos(cosine.sum(-1).clamp(-1, 1))).mean() < 0.5
    assert (ours["depth"][:, 0][both] - theirs["depth"][:, 0][both]).abs().max() < 1e-3
