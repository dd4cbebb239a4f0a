"""Held-out evaluation of a trained motion trainer on synthetic avatars it never saw
(``identity_seeds(n, "heldout", identity_seed)``): self-reenactment error and the pose
encoder's error against the ground-truth DeX RTS.

Batches are seeded by ``(seed, index)`` in their own ``"heldout"`` stream, and the expression
input is the plain fixed face crop (no augmentation), so a report is deterministic.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from factorportrait.expression.augment import AugmentConfig
from factorportrait.expression.sets import identity_seeds
from factorportrait.geometry.rotations import rotation_angle
from factorportrait.motion.data import (
    LandmarkPool,
    MotionSampling,
    render_motion_batch,
    step_generator,
)
from factorportrait.motion.geometry import pose_scale_and_rotation
from factorportrait.motion.losses import reconstruction_loss
from factorportrait.motion.model import MotionTrainer
from factorportrait.motion.step import InputSettings, motion_inputs

NO_AUGMENT = AugmentConfig(rotation_deg=0, scale_jitter=0, shift_jitter=0, brightness=0,
                           contrast=0, saturation=0)


@torch.no_grad()
def evaluate_motion(model: MotionTrainer, identities: int = 16, batches: int = 4,
                    batch_size: int = 8, sampling: MotionSampling | None = None,
                    settings: InputSettings | None = None, identity_seed: int = 0,
                    seed: int = 0) -> dict[str, float]:
    """Mean metrics over ``batches · batch_size`` held-out samples.

    Returns:
        ``reconstruction`` (L1 of the re-animated source to the driving frame, [-1, 1] units),
        ``identity_baseline`` (L1 of the source itself to the driving frame: what a model
        that ignores the driving frame scores), ``pose_l1`` (mean |P − P_gt| of the driving
        poses), ``rotation_deg`` (angle of R Rᵀ_gt), ``scale_rel`` (|s / s_gt − 1|) and
        ``translation`` (|t − t_gt| in normalised image units).
    """
    sampling = sampling if sampling is not None else MotionSampling()
    settings = replace(settings if settings is not None else InputSettings(),
                       augment=NO_AUGMENT)
    pool = LandmarkPool(identity_seeds(identities, "heldout", identity_seed))
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    for index in range(batches):
        generator = step_generator(seed, index, "heldout")
        batch = render_motion_batch(pool, batch_size, model.config.image_size, sampling,
                                    generator)
        inputs = motion_inputs(batch, model.config.expression.crop_size, settings, generator)
        out = model(inputs["source"], inputs["pose_input"], inputs["expression_input"],
                    inputs["source_pose_input"])
        predicted, truth = out["pose_driving"], inputs["target_pose"]
        scale, rotation = pose_scale_and_rotation(predicted)
        scale_gt, rotation_gt = pose_scale_and_rotation(truth)
        metrics = {
            "reconstruction": reconstruction_loss(out["image"], inputs["target"]),
            "identity_baseline": reconstruction_loss(inputs["source"], inputs["target"]),
            "pose_l1": (predicted - truth).abs().mean(),
            "rotation_deg": torch.rad2deg(rotation_angle(
                rotation @ rotation_gt.transpose(1, 2))).mean(),
            "scale_rel": (scale / scale_gt - 1).abs().mean(),
            "translation": (predicted[:, :2, 3] - truth[:, :2, 3]).norm(dim=1).mean()}
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value) / batches
    model.train(was_training)
    return totals
