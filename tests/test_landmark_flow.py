import numpy as np
import pytest
import torch

from ua3dtalk.landmark_flow import MOUTH_OPENING, LandmarkFlow, barycentric_binding, project, triangulation

SIZE, DEPTH = 128, 4.0
K = torch.tensor([[150.0, 0.0, 63.5], [0.0, 150.0, 63.5], [0.0, 0.0, 1.0]])
VIEW = torch.eye(4)[None]


def back_project(pixels: torch.Tensor, depth: float = DEPTH) -> torch.Tensor:
    """Pixels [N,2] -> world points [N,3] at one depth, for the identity camera."""
    x = (pixels[:, 0] - K[0, 2]) / K[0, 0] * depth
    y = (pixels[:, 1] - K[1, 2]) / K[1, 1] * depth
    return torch.stack([x, y, torch.full_like(x, depth)], dim=1)


def face_landmarks(seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(30, 98, (478, 2))).float()


def test_project_matches_the_pinhole_model():
    pixels = face_landmarks()[:20]
    torch.testing.assert_close(project(back_project(pixels), VIEW, K)[0], pixels, atol=1e-4, rtol=0)


def test_triangulation_leaves_the_mouth_opening_out():
    triangles = triangulation(face_landmarks().numpy())
    assert len(triangles) > 800
    assert not np.isin(triangles, MOUTH_OPENING).all(axis=1).any()


def test_binding_reproduces_inside_points_and_clamps_outside_ones():
    landmarks = face_landmarks().numpy().astype(np.float64)
    triangles = triangulation(landmarks)
    rng = np.random.default_rng(1)
    inside = rng.uniform(45, 83, (300, 2))
    outside = np.array([[5.0, 5.0], [120.0, 64.0]])
    index, weight = barycentric_binding(np.concatenate([inside, outside]), landmarks, triangles)
    assert index.shape == weight.shape == (302, 3)
    assert (weight >= 0).all() and np.allclose(weight.sum(1), 1)
    rebuilt = (landmarks[index] * weight[..., None]).sum(1)
    # points in the mouth opening fall in no kept triangle: all others are rebuilt exactly
    exact = np.linalg.norm(rebuilt[:300] - inside, axis=1) < 1e-6
    assert exact.mean() > 0.95
    assert np.linalg.norm(rebuilt[300:] - outside, axis=1).min() > 1.0   # clamped onto the nearest skin


def test_loss_is_zero_for_offsets_that_follow_the_landmarks():
    landmarks = face_landmarks()
    canonical = back_project(landmarks)
    flow = LandmarkFlow(canonical, K, landmarks, VIEW[0])
    xyz = back_project(torch.rand(500, 2) * 30 + 49)
    binding = flow.bind(xyz)
    shift = torch.tensor([3.0, -2.0])                        # every landmark moves by 3 px right, 2 px up
    moved = (landmarks + shift)[None]
    follow = torch.zeros(1, 500, 3)
    follow[..., :2] = shift * DEPTH / K[0, 0]
    assert flow.loss(xyz, follow, binding, moved, VIEW, SIZE) < 1e-6
    still = flow.loss(xyz, torch.zeros(1, 500, 3), binding, moved, VIEW, SIZE)
    torch.testing.assert_close(still, shift.abs().mean() / SIZE)
    # a rigid head motion is the camera's, not a deformation: no target motion
    turned = VIEW.clone()
    turned[0, 0, 3] = 0.1
    assert flow.loss(xyz, torch.zeros(1, 500, 3), binding, project(canonical, turned, K), turned, SIZE) < 1e-6


def test_emphasis_weights_the_landmarks_by_their_typical_motion():
    landmarks = face_landmarks()
    canonical = back_project(landmarks)
    half = len(landmarks) // 2
    frames = landmarks[None].repeat(3, 1, 1)
    frames[:, :half, 0] += 4.0                    # these landmarks move 4 px in every frame, the rest 1 px
    frames[:, half:, 1] -= 1.0
    views = VIEW.expand(3, 4, 4)
    for power in (1.0, 2.0):
        flow = LandmarkFlow(canonical, K, landmarks, VIEW[0], frames, views, emphasis=power)
        weight = flow.landmark_weight
        torch.testing.assert_close(weight.mean(), torch.tensor(1.0))
        torch.testing.assert_close(weight[0] / weight[-1], torch.tensor(4.0 ** power), rtol=1e-4, atol=0)
    # a Gaussian on the moving landmarks counts 4 times as much as one on the still ones
    flow = LandmarkFlow(canonical, K, landmarks, VIEW[0], frames, views, emphasis=1.0)
    on_moving, on_still = back_project(landmarks[:1]), back_project(landmarks[-1:])
    costs = [flow.loss(xyz, torch.zeros(1, 1, 3), flow.bind(xyz), frames[:1], VIEW, SIZE)
             for xyz in (on_moving, on_still)]
    torch.testing.assert_close(costs[0] / costs[1], torch.tensor(4.0 * 4.0), rtol=1e-3, atol=0)


def test_emphasis_needs_the_training_frames():
    landmarks = face_landmarks()
    with pytest.raises(ValueError, match="landmarks and viewmats"):
        LandmarkFlow(back_project(landmarks), K, landmarks, VIEW[0], emphasis=1.0)
