"""The procedural head avatar: determinism, world frame, blendshape regions, exact neutral
pose, rigid head rotation seen in rendered normals, recognisable colours."""

from __future__ import annotations

import pytest
import torch

from factorportrait.body import EXPRESSION_NAMES, AvatarIdentity, HeadAvatar, \
    axis_angle_to_matrix
from factorportrait.render import Meshes, render, vertex_normals

REQUIRED_EXPRESSIONS = ("jaw_open", "smile", "lip_pucker", "brow_raise", "brow_frown",
                        "blink_left", "blink_right", "cheek_puff")


@pytest.fixture(scope="module")
def avatar() -> HeadAvatar:
    return HeadAvatar(AvatarIdentity.sample(0))


def _zeros(frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.zeros(frames, len(EXPRESSION_NAMES)), torch.zeros(frames, 3), \
        torch.zeros(frames, 3)


def _one_expression(name: str, weight: float = 1.0) -> torch.Tensor:
    expression = torch.zeros(1, len(EXPRESSION_NAMES))
    expression[0, EXPRESSION_NAMES.index(name)] = weight
    return expression


def test_same_seed_same_avatar_and_different_seeds_differ():
    first, again = HeadAvatar(AvatarIdentity.sample(7)), HeadAvatar(AvatarIdentity.sample(7))
    assert first.identity == again.identity
    assert AvatarIdentity.sample(torch.Generator().manual_seed(7)) == first.identity
    for name in ("neutral_vertices", "faces", "vertex_colors", "blendshapes", "skin_weights"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    g = torch.Generator().manual_seed(1)
    expression, rotation = torch.rand(3, 8, generator=g), 0.3 * torch.randn(3, 3, generator=g)
    translation = 0.01 * torch.randn(3, 3, generator=g)
    assert torch.equal(first.pose(expression, rotation, translation),
                       again.pose(expression, rotation, translation))
    identities = [AvatarIdentity.sample(seed) for seed in range(6)]
    assert len(set(identities)) == 6
    skin = torch.tensor([i.skin_color for i in identities])
    width = torch.tensor([i.head_width for i in identities])
    assert skin.std(0).max() > 0.03 and width.std() > 0.002  # visibly different people
    other = HeadAvatar(identities[1])
    if other.neutral_vertices.shape == first.neutral_vertices.shape:
        assert (other.neutral_vertices - first.neutral_vertices).norm(dim=-1).max() > 0.005


def test_mesh_is_a_head_on_shoulders_in_the_opencv_world(avatar):
    verts, faces = avatar.neutral_vertices, avatar.faces
    assert 2000 < len(faces) < 15000 and int(faces.max()) < len(verts)
    assert set(REQUIRED_EXPRESSIONS) <= set(EXPRESSION_NAMES)
    head = verts[avatar.part == avatar.PARTS.index("head")]
    center = (head.amax(0) + head.amin(0)) / 2
    assert center.norm() < 0.03  # head centre at the origin
    assert 0.18 < head[:, 1].amax() - head[:, 1].amin() < 0.30  # ~0.2 m tall, metres
    nose = avatar.landmarks["nose_tip"]
    assert nose[2] < -0.09 and abs(float(nose[0])) < 1e-4  # the face looks along -z
    torso = verts[avatar.part == avatar.PARTS.index("torso")]
    assert torso[:, 1].amin() > 0.1  # shoulders below the head: up is -y
    assert avatar.landmarks["crown"][1] < -0.1
    tri = verts[faces[avatar.part[faces[:, 0]] == avatar.PARTS.index("head")]]
    volume = (torch.linalg.cross(tri[:, 0], tri[:, 1]) * tri[:, 2]).sum() / 6
    assert volume > 0  # closed head surface, outward winding


def test_zero_weights_give_the_neutral_mesh_exactly(avatar):
    posed = avatar.pose(*_zeros(3))
    assert torch.equal(posed, avatar.neutral_vertices.expand(3, -1, -1))


@pytest.mark.parametrize("name", EXPRESSION_NAMES)
def test_each_expression_moves_only_its_region(avatar, name):
    posed = avatar.pose(_one_expression(name), torch.zeros(1, 3), torch.zeros(1, 3))[0]
    moved = (posed - avatar.neutral_vertices).norm(dim=-1)
    region = avatar.expression_region(name)
    assert torch.all(moved[~region] == 0.0)
    assert moved.max() > 0.003  # visibly moves (metres)
    eye_y = float(avatar.landmarks["left_pupil"][1])  # world y grows downwards
    changed = avatar.neutral_vertices[moved > 0]
    parts = set(avatar.part[moved > 0].tolist())
    if name.startswith("blink"):
        side = 1.0 if name == "blink_left" else -1.0  # the subject's left is world +x
        assert parts == {avatar.PARTS.index("upper_lid")}
        assert torch.all(changed[:, 0] * side > 0)
    elif name.startswith("brow"):
        assert torch.all(changed[:, 1] < eye_y + 0.005) and parts == {0}
    else:  # mouth, cheeks and jaw live below the eyes
        assert torch.all(changed[:, 1] > eye_y) and parts == {0}


def test_expressions_are_linear_blendshapes_plus_joint_rotations(avatar):
    blend = ("smile", "brow_raise", "cheek_puff")
    expression = sum(_one_expression(name, 0.5) for name in blend)
    posed = avatar.pose(expression, torch.zeros(1, 3), torch.zeros(1, 3))[0]
    expected = avatar.neutral_vertices + 0.5 * sum(
        avatar.blendshapes[EXPRESSION_NAMES.index(n)] for n in blend)
    assert torch.allclose(posed, expected, atol=1e-7)
    jaw = avatar.pose(_one_expression("jaw_open"), torch.zeros(1, 3), torch.zeros(1, 3))[0]
    chin, mouth = avatar.landmarks["chin"], avatar.landmarks["mouth"]
    index = (avatar.neutral_vertices - chin).norm(dim=-1).argmin()
    assert jaw[index, 1] > avatar.neutral_vertices[index, 1] + 0.01  # the chin drops
    upper = (avatar.neutral_vertices - (mouth - torch.tensor([0, 0.004, 0]))).norm(dim=-1)
    assert (jaw - avatar.neutral_vertices)[upper.argmin()].norm() < 1e-3  # upper lip stays


def test_batched_pose_equals_per_frame_pose(avatar):
    g = torch.Generator().manual_seed(3)
    expression, rotation = torch.rand(4, 8, generator=g), 0.4 * torch.randn(4, 3, generator=g)
    translation = 0.02 * torch.randn(4, 3, generator=g)
    batched = avatar.pose(expression, rotation, translation)
    for i in range(4):
        single = avatar.pose(expression[i:i + 1], rotation[i:i + 1], translation[i:i + 1])
        assert torch.allclose(batched[i], single[0], atol=1e-7)
    with pytest.raises(ValueError, match="expression"):
        avatar.pose(torch.zeros(2, 3), rotation[:2], translation[:2])
    with pytest.raises(ValueError, match="head_rotation"):
        avatar.pose(expression, rotation[:2], translation)


def _rigid_head(avatar: HeadAvatar) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices skinned to the head alone (no root / neck weight) and faces among them."""
    weights = avatar.skin_weights
    rigid = (weights[:, avatar.JOINTS.index("root")] == 0) & \
        (weights[:, avatar.JOINTS.index("neck")] == 0)
    faces = avatar.faces[rigid[avatar.faces].all(dim=1)]
    return rigid, faces


def test_head_pose_rotates_the_head_rigidly_and_its_normals(avatar):
    rotation_vector = torch.tensor([[0.15, 0.5, -0.1]])
    translation = torch.tensor([[0.01, -0.02, 0.03]])
    posed = avatar.pose(torch.zeros(1, 8), rotation_vector, translation)[0]
    rigid, faces = _rigid_head(avatar)
    R = axis_angle_to_matrix(rotation_vector[0])  # neck share + head share = full rotation
    neutral = avatar.neutral_vertices
    t = posed[rigid][0] - R @ neutral[rigid][0]
    assert torch.allclose(posed[rigid], neutral[rigid] @ R.T + t, atol=1e-6)
    n_posed = vertex_normals(posed[None], faces)[0][rigid]
    n_neutral = vertex_normals(neutral[None], faces)[0][rigid]
    assert torch.allclose(n_posed, n_neutral @ R.T, atol=1e-4)
    # Rendered: the posed head from a camera equals the neutral head from the camera moved
    # by the inverse head motion -- the normal map turns with the head.
    K = torch.tensor([[300.0, 0.0, 48.0], [0.0, 300.0, 48.0], [0.0, 0.0, 1.0]])
    c2w = torch.eye(4)
    c2w[2, 3] = -0.7
    motion = torch.eye(4)
    motion[:3, :3], motion[:3, 3] = R, t
    posed_view = render(Meshes(posed, faces), (K, c2w), 96, 96, outputs=("normals", "mask"))
    neutral_view = render(Meshes(neutral, faces), (K, torch.linalg.inv(motion) @ c2w), 96, 96,
                          outputs=("normals", "mask"))
    both = (posed_view["mask"] * neutral_view["mask"])[0, 0] > 0
    assert (posed_view["mask"] != neutral_view["mask"]).sum() <= 3
    difference = (posed_view["normals"] - neutral_view["normals"])[0][:, both].abs()
    assert difference.mean() < 1e-4 and difference.max() < 0.05
    unposed = render(Meshes(neutral, faces), (K, c2w), 96, 96, outputs=("normals",))
    assert (unposed["normals"] - posed_view["normals"]).abs().mean() > 0.05


def test_frontal_render_shows_dark_pupils_red_lips_and_hair(avatar):
    K = torch.tensor([[600.0, 0.0, 64.0], [0.0, 600.0, 96.0], [0.0, 0.0, 1.0]])
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.0, -0.02, -0.7])
    rgb = render(Meshes(avatar.neutral_vertices, avatar.faces, avatar.vertex_colors),
                 (K, c2w), 192, 128, outputs=("rgb",), supersample=2)["rgb"][0]

    def pixel(point: torch.Tensor) -> torch.Tensor:
        cam = point - c2w[:3, 3]
        u, v = (K[:2, :2] @ (cam[:2] / cam[2]) + K[:2, 2]).long().tolist()
        return rgb[:, v, u]

    for side in ("left_pupil", "right_pupil"):
        assert pixel(avatar.landmarks[side]).max() < 0.2
    lips = pixel(avatar.landmarks["mouth"] + torch.tensor([0.0, 0.004, 0.0]))
    assert lips[0] > lips[1] + 0.05 and lips[0] > lips[2] + 0.05
    hair = pixel(avatar.landmarks["crown"] + torch.tensor([0.0, 0.02, -0.04]))
    hair_color = torch.tensor(avatar.identity.hair_color)
    skin_color = torch.tensor(avatar.identity.skin_color)
    direction = torch.nn.functional.normalize
    assert (direction(hair, dim=0) - direction(hair_color, dim=0)).norm() < \
        (direction(hair, dim=0) - direction(skin_color, dim=0)).norm()
