"""The torch rasteriser and MeshRenderer against analytic answers: sphere normals, cube mask
and depth, occlusion, back faces, supersampling, Lambert shading, batching."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from factorportrait.body.avatar_primitives import ellipsoid
from factorportrait.render import MeshRenderer, Meshes, decode_normals, rasterize, render


def intrinsics(focal: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])


def camera_at(z: float) -> torch.Tensor:
    """c2w of a camera at (0, 0, z) looking along +z (identity rotation)."""
    c2w = torch.eye(4)
    c2w[2, 3] = z
    return c2w


def pixel_rays(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(H, W, 3)`` camera-space ray directions with z = 1 through pixel centres."""
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    return torch.stack([x, y, torch.ones_like(x)], -1)


def cube(size: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Axis-aligned cube centred at the origin, 12 outward-wound triangles."""
    corners = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0)
                            for z in (-1.0, 1.0)]) * size / 2
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = []
    for a, b, c, d in quads:
        faces += [(a, b, c), (a, c, d)]
    faces = torch.tensor(faces)
    tri = corners[faces]
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    inward = (normal * tri.mean(1)).sum(-1) < 0
    faces[inward] = faces[inward][:, [0, 2, 1]]
    return corners, faces


def ray_box_depth(rays: torch.Tensor, origin: torch.Tensor, rotation: torch.Tensor,
                  half: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab test of camera rays ``(H, W, 3)`` (z = 1) against a box ``R [-half, half]^3 + o``
    given in camera space; returns hit mask and camera z of the entry point."""
    d = rays @ rotation  # ray directions in box coordinates
    o = (-origin) @ rotation  # camera centre in box coordinates
    safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t0, t1 = (-half - o) / safe, (half - o) / safe
    near = torch.minimum(t0, t1).amax(-1)
    far = torch.maximum(t0, t1).amin(-1)
    hit = (far >= near) & (far > 0)
    return hit, torch.where(hit, near, torch.zeros_like(near))


def test_sphere_normal_map_matches_analytic_normals_at_128():
    verts, faces, _ = ellipsoid((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 48, 96)
    K = intrinsics(120.0, 64.0, 64.0)
    out = render(Meshes(verts, faces), (K, camera_at(-3.0)), 128, 128,
                 outputs=("normals", "mask", "depth"))
    rays = pixel_rays(K, 128, 128)
    center = torch.tensor([0.0, 0.0, 3.0])
    unit = rays / rays.norm(dim=-1, keepdim=True)
    b = (unit * center).sum(-1)
    disc = b**2 - (center.dot(center) - 1.0)
    analytic_mask = disc > 0
    distance = b - disc.clamp_min(0).sqrt()
    point = unit * distance[..., None]
    analytic_normal = point - center
    mask = out["mask"][0, 0] > 0.5
    assert (mask != analytic_mask).sum() <= 0.01 * analytic_mask.sum()
    both = mask & analytic_mask
    normals = torch.nn.functional.normalize(decode_normals(out["normals"])[0], dim=-1)
    cosine = (normals[both] * analytic_normal[both]).sum(-1).clamp(-1, 1)
    assert torch.rad2deg(torch.acos(cosine)).mean() < 2.0
    assert (out["depth"][0, 0][both] - point[..., 2][both]).abs().mean() < 2e-3
    assert torch.all(out["normals"][:, :, ~mask] == 0.0)  # documented background


@pytest.mark.parametrize("rotated", [False, True])
def test_cube_mask_and_depth_match_ray_box_intersection(rotated):
    verts, faces = cube(1.0)
    if rotated:
        ay, ax = math.radians(30.0), math.radians(20.0)
        rot_y = torch.tensor([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0],
                              [-math.sin(ay), 0, math.cos(ay)]])
        rot_x = torch.tensor([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)],
                              [0, math.sin(ax), math.cos(ax)]])
        rotation = rot_y @ rot_x
    else:
        rotation = torch.eye(3)
    origin = torch.tensor([0.1, -0.05, 3.0])  # box centre in camera space
    K = intrinsics(80.0, 32.3, 31.7)
    out = render(Meshes(verts @ rotation.T, faces), (K, camera_at(0.0) @ _shift(-origin)),
                 64, 64, outputs=("mask", "depth"))
    hit, depth = ray_box_depth(pixel_rays(K, 64, 64), origin, rotation, 0.5)
    mask = out["mask"][0, 0] > 0.5
    assert (mask != hit).sum() <= (2 if rotated else 0)
    both = mask & hit
    assert (out["depth"][0, 0][both] - depth[both]).abs().max() < 1e-4
    assert torch.all(out["depth"][0, 0][~mask] == 0.0)
    if not rotated:  # the front face z = 2.5 fills exactly |x|, |y| <= 0.5 at that depth
        assert torch.allclose(out["depth"][0, 0][mask], torch.tensor(2.5), atol=1e-5)


def _shift(offset: torch.Tensor) -> torch.Tensor:
    """c2w of an identity-rotation camera at ``offset``."""
    c2w = torch.eye(4)
    c2w[:3, 3] = offset
    return c2w


def _two_triangles(front_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    front = torch.tensor([[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 2.0]])
    back = torch.tensor([[-2.0, -2.0, 4.0], [2.0, -2.0, 4.0], [0.0, 2.0, 4.0]]) + \
        torch.tensor([2.0, 0.0, 0.0])
    verts = torch.cat([front, back] if front_first else [back, front])
    return verts, torch.tensor([[0, 1, 2], [3, 4, 5]])


@pytest.mark.parametrize("front_first", [True, False])
def test_front_triangle_occludes_back_triangle(front_first):
    verts, faces = _two_triangles(front_first)
    K = intrinsics(20.0, 32.0, 32.0)
    fragments = rasterize(verts[None], faces, K, 64, 64)
    front_face = 0 if front_first else 1
    depth, face = fragments.depth[0], fragments.face_index[0]
    front_pixels = face == front_face
    assert front_pixels.sum() > 100 and (face == 1 - front_face).sum() > 100
    assert torch.allclose(depth[front_pixels], torch.tensor(2.0), atol=1e-5)
    assert torch.allclose(depth[face == 1 - front_face], torch.tensor(4.0), atol=1e-5)
    # every pixel the front triangle covers alone also shows it when both are drawn
    alone = rasterize(verts[None], faces[front_face:front_face + 1], K, 64, 64).mask[0]
    assert torch.equal(front_pixels, alone)


def test_back_faces_are_two_sided_by_default_or_culled():
    facing_away = torch.tensor([[[-1.0, -1.0, 3.0], [1.0, -1.0, 3.0], [0.0, 1.0, 3.0]]])
    faces = torch.tensor([[0, 1, 2]])
    K, c2w = intrinsics(30.0, 16.0, 16.0), torch.eye(4)
    two_sided = render(Meshes(facing_away, faces), (K, c2w), 32, 32, outputs=("normals", "mask"))
    mask = two_sided["mask"][0, 0] > 0
    assert mask.sum() > 50
    normal = decode_normals(two_sided["normals"])[0][mask]  # flipped towards the camera
    assert torch.allclose(normal, torch.tensor([0.0, 0.0, -1.0]).expand_as(normal), atol=1e-5)
    culled = render(Meshes(facing_away, faces), (K, c2w), 32, 32, outputs=("mask",),
                    cull_backfaces=True)
    assert culled["mask"].sum() == 0
    facing = render(Meshes(facing_away, faces[:, [0, 2, 1]]), (K, c2w), 32, 32,
                    outputs=("mask",), cull_backfaces=True)
    assert torch.equal(facing["mask"], two_sided["mask"])


def test_shared_edges_leave_no_cracks():
    # a jittered 12 x 12 grid of quads (288 triangles) filling the view: every pixel centre
    # is covered by exactly the plane, at its depth
    g = torch.Generator().manual_seed(0)
    u, v = torch.meshgrid(torch.linspace(-1, 1, 13), torch.linspace(-1, 1, 13), indexing="ij")
    grid = torch.stack([u, v], -1)
    interior = (u.abs() < 1) & (v.abs() < 1)
    grid[interior] += 0.05 * torch.randn(int(interior.sum()), 2, generator=g)
    verts = torch.cat([3.0 * grid.reshape(-1, 2), torch.full((169, 1), 2.0)], -1)
    index = torch.arange(169).view(13, 13)
    a, b, c, d = index[:-1, :-1], index[1:, :-1], index[1:, 1:], index[:-1, 1:]
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3),
                       torch.stack([a, c, d], -1).reshape(-1, 3)])
    fragments = rasterize(verts[None], faces, intrinsics(30.0, 24.0, 24.0), 48, 48)
    assert fragments.mask.all()
    assert torch.allclose(fragments.depth, torch.tensor(2.0))
    assert torch.allclose(fragments.barycentrics.sum(-1), torch.tensor(1.0))


def _wall(x_left: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A camera-facing square at z = 2 whose left edge projects to pixel x = ``x_left``
    (focal 20, centre 16)."""
    left = (x_left - 16.0) / 20.0 * 2.0
    verts = torch.tensor([[left, -5.0, 2.0], [left, 5.0, 2.0], [10.0, 5.0, 2.0],
                          [10.0, -5.0, 2.0]])
    return verts, torch.tensor([[0, 1, 2], [0, 2, 3]])


def test_supersampling_gives_fractional_coverage_at_edges():
    verts, faces = _wall(16.25)  # covers 3 of the 4 sub-pixel columns of pixel column 16
    cams = (intrinsics(20.0, 16.0, 16.0), torch.eye(4))
    aliased = render(Meshes(verts, faces), cams, 32, 32, outputs=("mask", "normals"))
    smooth = render(Meshes(verts, faces), cams, 32, 32, outputs=("mask", "normals"),
                    supersample=4)
    assert torch.all(aliased["mask"][0, 0, :, 16] == 1.0)
    assert torch.allclose(smooth["mask"][0, 0, :, 16], torch.tensor(0.75))
    assert torch.all(smooth["mask"][0, 0, :, 17:] == 1.0)
    assert torch.all(smooth["mask"][0, 0, :, :16] == 0.0)
    facing_blue = torch.tensor([0.5, 0.5, 1.0])  # camera-facing normal, encoded
    assert torch.allclose(smooth["normals"][0, :, 5, 16], 0.75 * facing_blue, atol=1e-5)


def test_lambert_rgb_with_perspective_correct_vertex_colours():
    # a tilted plane whose vertex colours are a linear function of position
    verts = torch.tensor([[-1.0, -1.0, 2.0], [1.0, -1.0, 3.0], [1.0, 1.0, 3.0], [-1.0, 1.0, 2.0]])
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])

    def color_of(p: torch.Tensor) -> torch.Tensor:
        return torch.stack([0.5 + 0.3 * p[..., 0], 0.5 + 0.2 * p[..., 1],
                            0.2 + 0.2 * (p[..., 2] - 2.0)], -1)

    K = intrinsics(30.0, 32.0, 32.0)
    flat = render(Meshes(verts, faces, color_of(verts)), (K, torch.eye(4)), 64, 64,
                  outputs=("rgb", "mask"), ambient=1.0, diffuse=0.0,
                  background_rgb=(0.1, 0.2, 0.3))
    mask = flat["mask"][0, 0] > 0
    rays = pixel_rays(K, 64, 64)
    depth = 2.0 + (rays[..., 0] * 2.0 + 1.0) / (2.0 - rays[..., 0])  # plane z = 2.5 + x / 2
    point = rays * depth[..., None]
    rgb = flat["rgb"][0].permute(1, 2, 0)
    assert torch.allclose(rgb[mask], color_of(point[mask]), atol=2e-4)
    assert torch.allclose(rgb[~mask], torch.tensor([0.1, 0.2, 0.3]))
    lit = render(Meshes(verts, faces, torch.full((4, 3), 0.8)), (K, torch.eye(4)), 64, 64,
                 outputs=("rgb",), ambient=0.2, diffuse=0.6, light_direction=(0.0, 0.0, -1.0))
    normal = torch.nn.functional.normalize(torch.tensor([-0.5, 0.0, 1.0]), dim=0)
    expected = 0.8 * (0.2 + 0.6 * abs(float(normal[2])))
    assert torch.allclose(lit["rgb"][0].permute(1, 2, 0)[mask], torch.tensor(expected),
                          atol=1e-4)


def test_batched_frames_equal_single_frame_renders_and_cameras_duck_type():
    verts, faces, _ = ellipsoid((0.0, 0.0, 0.0), (0.3, 0.4, 0.2), 12, 24)
    g = torch.Generator().manual_seed(0)
    frames = verts + 0.05 * torch.randn(3, 1, 3, generator=g)  # (3, V, 3)
    c2w = torch.stack([camera_at(-2.0), camera_at(-2.5), _shift(torch.tensor([0.1, 0, -2.0]))])
    K = intrinsics(40.0, 24.0, 24.0).expand(3, 3, 3)
    cameras = SimpleNamespace(K=K, c2w=c2w)
    batched = render(Meshes(frames, faces), cameras, 48, 48)
    for i in range(3):
        single = render(Meshes(frames[i], faces), (K[i], c2w[i]), 48, 48)
        for name, image in batched.items():
            assert torch.allclose(image[i], single[name][0], atol=1e-6), name
    again = render(Meshes(frames, faces), cameras, 48, 48)
    assert all(torch.equal(again[k], batched[k]) for k in batched)  # deterministic
    static = render(Meshes(verts, faces), cameras, 48, 48, outputs=("mask",))["mask"]
    assert static.shape == (3, 1, 48, 48) and not torch.equal(static[0], static[1])


def test_invalid_inputs_raise_clear_errors():
    verts, faces = cube()
    cams = (intrinsics(10.0, 8.0, 8.0), camera_at(-3.0))
    with pytest.raises(ValueError, match="outputs"):
        render(Meshes(verts, faces), cams, 16, 16, outputs=("albedo",))
    with pytest.raises(ValueError, match="cameras.K"):
        render(Meshes(verts, faces), (torch.eye(4), camera_at(-3.0)), 16, 16)
    with pytest.raises(ValueError, match="meshes.verts"):
        render(Meshes(verts[:, :2], faces), cams, 16, 16)
    with pytest.raises(ValueError, match="faces"):
        rasterize(verts[None], faces + 100, cams[0], 16, 16)
    with pytest.raises(ValueError, match="supersample"):
        MeshRenderer(16, 16, supersample=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_matches_cpu():
    verts, faces, _ = ellipsoid((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 32, 64)
    cams = (intrinsics(120.0, 64.0, 64.0), camera_at(-3.0))
    cpu = render(Meshes(verts, faces), cams, 128, 128)
    cuda = render(Meshes(verts.cuda(), faces.cuda()), (cams[0].cuda(), cams[1].cuda()), 128, 128)
    assert (cpu["mask"] != cuda["mask"].cpu()).sum() <= 4
    both = (cpu["mask"] * cuda["mask"].cpu()) > 0
    assert (cpu["normals"] - cuda["normals"].cpu()).abs().amax(1)[both[:, 0]].max() < 1e-3
