"""Held-out evaluation of a trained motion trainer on synthetic avatars it never saw
(``identity_seeds(n, "heldout", identity_seed)``): self-reenactment against baselines and the
pose encoder's error against the ground-truth DeX RTS, beside MediaPipe's.

Reconstruction of the driving frame (L1, PSNR, SSIM on [-1, 1] frames), by:

- ``model``: the trainer as trained (both poses and the expression from the encoders);
- ``gt_pose``: the source's volume warped by the **ground-truth** poses and decoded with the
  *source's* expression code — warping by the true pose alone, no driving expression;
- ``image_warp``: the source image itself, as a plane through the head centre, warped by the
  ground-truth pose (:func:`image_warp`), no network at all;
- ``source``: the source frame copied.

Pose: the rotation error (degrees) of the driving pose, absolute (``R Rᵀ_gt``) and relative
(source-to-driving, ``R_d R_sᵀ`` against the truth's — what the warp uses), the relative scale
and the translation error. :func:`tracker_pose_errors` measures MediaPipe's landmark fit
(:class:`~factorportrait.tracking.FaceTracker`) on the same samples, rendered at a size its
face detector accepts.

Batches are seeded by ``(seed, index)`` in their own ``"heldout"`` stream, and the expression
input is the plain fixed face crop (no augmentation), so a report is deterministic.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from factorportrait.evaluation.metrics import psnr, ssim
from factorportrait.expression.augment import AugmentConfig
from factorportrait.expression.sets import identity_seeds
from factorportrait.geometry.head_pose import relative_pose
from factorportrait.geometry.rotations import rotation_angle
from factorportrait.motion.augment import landmark_face_boxes
from factorportrait.motion.data import (
    LandmarkPool,
    MotionSampling,
    render_motion_batch,
    step_generator,
)
from factorportrait.motion.geometry import pose_scale_and_rotation, warp_volume
from factorportrait.motion.model import MotionTrainer
from factorportrait.motion.step import InputSettings, motion_inputs

NO_AUGMENT = AugmentConfig(rotation_deg=0, scale_jitter=0, shift_jitter=0, brightness=0,
                           contrast=0, saturation=0)
METHODS = ("model", "gt_pose", "image_warp", "source")


def image_warp(source: Tensor, pose_source: Tensor, pose_driving: Tensor) -> Tensor:
    """The source image warped by a pose change alone, as a plane through the head centre:
    for points of the source's ``z = 0`` plane the relative pose ``M = P_d P_s⁻¹`` is the 2D
    affine map ``(u, v) -> M[:2, :2] (u, v) + M[:2, 3]``, applied to ``source (B, 3, S, S)``
    with bilinear sampling (the border repeats). The identity returns ``source``; an in-plane
    turn rotates it."""
    relative = relative_pose(pose_source.double(), pose_driving.double())  # (B, 3, 4)
    linear, shift = relative[:, :2, :2], relative[:, :2, 3:]
    inverse = torch.linalg.inv(linear)  # output (u, v) -> source (u, v)
    theta = torch.cat([inverse, -inverse @ shift], dim=2).to(source.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(source.shape), align_corners=False)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def rotation_errors(predicted: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """Degrees ``(B,)`` between predicted and true rotations ``(2B, 3, 3)`` (sources, then
    drivings): the drivings' absolute error and the error of the source-to-driving rotation."""
    source, driving = predicted.chunk(2)
    source_gt, driving_gt = truth.chunk(2)
    absolute = rotation_angle(driving @ driving_gt.transpose(1, 2))
    relative = rotation_angle((driving @ source.transpose(1, 2))
                              @ (driving_gt @ source_gt.transpose(1, 2)).transpose(1, 2))
    return torch.rad2deg(absolute), torch.rad2deg(relative)


def _images(model: MotionTrainer, inputs: dict[str, Tensor], out: dict[str, Tensor]
            ) -> dict[str, Tensor]:
    """Each method's reconstruction of ``inputs["target"]`` (module docstring)."""
    source, truth_s, truth_d = inputs["source"], inputs["source_pose"], inputs["target_pose"]
    crops = inputs["source_expression_input"]
    volume = warp_volume(model.appearance(source), truth_s, truth_d)
    return {"model": out["image"], "gt_pose": model.decoder(volume, model.expression(crops)),
            "image_warp": image_warp(source, truth_s, truth_d),
            "source": source}


@torch.no_grad()
def evaluate_motion(model: MotionTrainer, identities: int = 16, batches: int = 4,
                    batch_size: int = 8, sampling: MotionSampling | None = None,
                    settings: InputSettings | None = None, identity_seed: int = 0,
                    seed: int = 0) -> dict[str, float]:
    """Mean metrics over ``batches · batch_size`` held-out samples.

    Returns:
        ``{method}_{l1,psnr,ssim}`` for each of :data:`METHODS`; ``reconstruction`` and
        ``identity_baseline`` (``model_l1`` and ``source_l1``, the names of earlier reports);
        ``pose_l1`` (mean |P − P_gt| of the driving poses), ``rotation_deg`` (angle of
        R Rᵀ_gt), ``relative_rotation_deg`` (of the source-to-driving rotation),
        ``scale_rel`` (|s / s_gt − 1|) and ``translation`` (|t − t_gt| in normalised image
        units).
    """
    sampling = sampling if sampling is not None else MotionSampling()
    settings = replace(settings if settings is not None else InputSettings(),
                       augment=NO_AUGMENT)
    pool = LandmarkPool(identity_seeds(identities, "heldout", identity_seed))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device  # batches are rendered on the CPU
    totals: dict[str, float] = {}
    size, crop = model.config.image_size, model.config.expression.crop_size
    for index in range(batches):
        generator = step_generator(seed, index, "heldout")
        batch = render_motion_batch(pool, batch_size, size, sampling, generator)
        inputs = motion_inputs(batch, crop, settings, generator)
        inputs["source_expression_input"] = _plain_crops(batch.source, batch.source_landmarks,
                                                         crop, settings.face_scale)
        inputs = {name: value.to(device) for name, value in inputs.items()}
        out = model(inputs["source"], inputs["pose_input"], inputs["expression_input"],
                    inputs["source_pose_input"])
        predicted = torch.cat([out["pose_source"], out["pose_driving"]])
        truth = torch.cat([inputs["source_pose"], inputs["target_pose"]])
        (scale, rotation), (scale_gt, rotation_gt) = map(pose_scale_and_rotation,
                                                         (predicted, truth))
        absolute, relative = rotation_errors(rotation, rotation_gt)
        driving, driving_gt = out["pose_driving"], inputs["target_pose"]
        metrics = {"pose_l1": (driving - driving_gt).abs().mean(),
                   "rotation_deg": absolute.mean(), "relative_rotation_deg": relative.mean(),
                   "scale_rel": (scale / scale_gt - 1).abs()[batch_size:].mean(),
                   "translation": (driving[:, :2, 3] - driving_gt[:, :2, 3]).norm(dim=1).mean()}
        target = inputs["target"]
        for method, image in _images(model, inputs, out).items():
            metrics[f"{method}_l1"] = (image - target).abs().mean()
            metrics[f"{method}_psnr"] = psnr(image, target, 2.0).mean()
            metrics[f"{method}_ssim"] = ssim(image, target, 2.0).mean()
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value) / batches
    totals["reconstruction"], totals["identity_baseline"] = totals["model_l1"], \
        totals["source_l1"]
    model.train(was_training)
    return totals


def _plain_crops(frames: Tensor, landmarks: Tensor, size: int, face_scale: float) -> Tensor:
    """The un-augmented expression crop (upright landmark box times ``face_scale``)."""
    from factorportrait.tracking.crop import FaceBoxes, crop_faces

    boxes = landmark_face_boxes(landmarks, frames.shape[2], frames.shape[3], scale=face_scale)
    upright = FaceBoxes(boxes.center, boxes.side, torch.zeros_like(boxes.roll))
    return crop_faces(frames, upright, size, roll_normalise=True)


@torch.no_grad()
def tracker_pose_errors(image_size: int = 256, identities: int = 16, batches: int = 4,
                        batch_size: int = 8, sampling: MotionSampling | None = None,
                        identity_seed: int = 0, seed: int = 0, tracker=None
                        ) -> dict[str, float]:
    """MediaPipe's head rotation (:class:`~factorportrait.tracking.FaceTracker`, one photo at
    a time) on the samples :func:`evaluate_motion` scores with the same arguments, rendered
    at ``image_size`` pixels (the scenes are the same: the draws do not depend on the size).

    The tracker's rotation is the head's in the camera frame, as ``R`` of the DeX pose; its
    canonical face and the avatars' head frame may differ by a fixed turn, which the
    relative error cancels. Frames without a detected face are left out (``detected``: the
    fraction of samples with both frames detected).
    """
    from factorportrait.tracking import FaceTracker, NoFaceError

    sampling = sampling if sampling is not None else MotionSampling()
    pool = LandmarkPool(identity_seeds(identities, "heldout", identity_seed))
    tracker = tracker if tracker is not None else FaceTracker()
    absolute, relative, pairs = [], [], 0
    for index in range(batches):
        generator = step_generator(seed, index, "heldout")
        batch = render_motion_batch(pool, batch_size, image_size, sampling, generator)
        frames = torch.cat([batch.source, batch.driving])  # (2B, 3, S, S)
        pixels = ((frames + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1)
        rotations: list[Tensor | None] = []
        for frame in pixels:
            try:
                face = tracker.track_image(frame, name="held-out frame")
            except (NoFaceError, ValueError):
                rotations.append(None)
                continue
            rotations.append(face.pose.rotation[0].float())
        _, truth = pose_scale_and_rotation(torch.cat([batch.source_pose, batch.driving_pose]))
        for sample in range(batch_size):
            pairs += 1
            found_s, found_d = rotations[sample], rotations[batch_size + sample]
            if found_s is None or found_d is None:
                continue
            errors = rotation_errors(torch.stack([found_s, found_d]),
                                     truth[[sample, batch_size + sample]])
            absolute.append(errors[0])
            relative.append(errors[1])
    found = len(absolute)
    if not found:
        return {"detected": 0.0, "rotation_deg": float("nan"),
                "relative_rotation_deg": float("nan")}
    return {"detected": found / pairs, "rotation_deg": float(torch.cat(absolute).mean()),
            "relative_rotation_deg": float(torch.cat(relative).mean())}
