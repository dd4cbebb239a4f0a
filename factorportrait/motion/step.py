"""One optimisation step of the motion trainer's GAN (DeX §3.2), as plain functions of
(models, optimisers, batch).

    MotionBatch ─ motion_inputs ─ source, pose inputs (eyes / mouth masked), expression input
                                  (cross-view or same-view frame, rotated face crop), target
    train_step: generator step  L_G = λ_rec L1 + λ_pyr pyramid L1 + λ_adv adv + λ_fm FM
                                      (+ λ_vgg VGG, + λ_pose supervised RTS)
                discriminator step  L_D = adversarial(real = target, fake = detached image)

A step can cut its batch into micro-batches (``shares``: gradient accumulation) and average
its gradients over processes (``average``: data parallelism, :func:`average_gradients`).
Both give one process's result on the whole batch, except that BatchNorm (in the expression
encoder) normalises each micro-batch by its own statistics; and with the same cut, ``N``
processes of one micro-batch each equal one process of ``N`` micro-batches bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from factorportrait.expression.augment import AugmentConfig
from factorportrait.motion.augment import (
    ViewGroup,
    cross_view_driving,
    expression_input,
    mask_eyes_and_mouth,
)
from factorportrait.motion.data import MotionBatch
from factorportrait.motion.discriminator import PatchDiscriminator
from factorportrait.motion.losses import (
    ADVERSARIAL_KINDS,
    VGGPerceptualLoss,
    discriminator_adversarial_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    pyramid_l1_loss,
    reconstruction_loss,
)
from factorportrait.motion.model import MotionTrainer


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator's loss terms (``recipes/motion.yaml`` ``loss:``).

    Attributes:
        reconstruction: L1 to the driving frame.
        pyramid: multi-scale L1 over ``pyramid_levels`` levels.
        adversarial: the generator's adversarial term (``adversarial_kind``).
        feature_matching: discriminator feature matching.
        perceptual: VGG19 perceptual loss; used only when the trainer is given VGG weights.
        pose: L1 of both predicted RTS poses to the synthetic ground truth — not in the paper
            (there the pose is learnt through the warp alone); it pins the pose encoder to the
            library's head-pose convention. 0 = off.
    """

    reconstruction: float = 1.0
    pyramid: float = 1.0
    pyramid_levels: int = 4
    adversarial: float = 0.1
    feature_matching: float = 1.0
    perceptual: float = 1.0
    pose: float = 0.0
    adversarial_kind: str = "hinge"

    def __post_init__(self) -> None:
        for name in ("reconstruction", "pyramid", "adversarial", "feature_matching",
                     "perceptual", "pose"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"motion loss weight {name} must be a number >= 0, got "
                                 f"{value!r}")
        if self.adversarial_kind not in ADVERSARIAL_KINDS:
            raise ValueError(f"loss.adversarial_kind must be one of {ADVERSARIAL_KINDS}, got "
                             f"{self.adversarial_kind!r}")
        if isinstance(self.pyramid_levels, bool) or not isinstance(self.pyramid_levels, int) \
                or self.pyramid_levels < 1:
            raise ValueError(f"loss.pyramid_levels must be an integer >= 1, got "
                             f"{self.pyramid_levels!r}")


@dataclass(frozen=True)
class InputSettings:
    """How a batch becomes the generator's inputs (DeX Fig. 3).

    Attributes:
        cross_view_probability: chance that the expression input is the driving instant seen
            by another camera (else the driving frame itself, only rotated).
        mask_expand: growth of the eye and mouth contours masked in the pose inputs.
        face_scale: expression crop side / landmark box side.
        augment: the expression crop's rotation, jitter and colour augmentation.
    """

    cross_view_probability: float = 0.5
    mask_expand: float = 1.5
    face_scale: float = 1.2
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.cross_view_probability <= 1:
            raise ValueError(f"cross_view_probability must be in [0, 1], got "
                             f"{self.cross_view_probability}")
        if not self.mask_expand > 0 or not self.face_scale > 0:
            raise ValueError("mask_expand and face_scale must be > 0")


def motion_inputs(batch: MotionBatch, crop_size: int, settings: InputSettings,
                  generator: torch.Generator) -> dict[str, Tensor]:
    """The generator's inputs and targets of a batch (deterministic given ``generator``).

    Returns:
        ``source``, ``source_pose_input``, ``pose_input``, ``target`` ``(B, 3, S, S)``,
        ``expression_input`` ``(B, 3, c, c)`` (``c = crop_size``), ``source_pose``,
        ``target_pose`` ``(B, 3, 4)`` ground-truth RTS.
    """
    # 1. Pose inputs: source and driving with eyes and mouth covered (§3.2).
    pose_inputs = mask_eyes_and_mouth(torch.cat([batch.source, batch.driving]),
                                      torch.cat([batch.source_landmarks, batch.driving_landmarks]),
                                      expand=settings.mask_expand)
    source_pose_input, pose_input = pose_inputs.split(batch.batch_size)
    # 2. Expression frame: the driving instant from another view, or the driving frame itself.
    frames, landmarks = [], []
    for index in range(batch.batch_size):
        other = float(torch.rand((), generator=generator)) < settings.cross_view_probability
        if other:
            group = ViewGroup(batch.views[index, :, None], batch.view_landmarks[index, :, None])
            frame, points, _ = cross_view_driving(group, 0, 0, generator)
        else:
            frame, points = batch.driving[index], batch.driving_landmarks[index]
        if batch.use_other is not None and batch.use_other[index]:  # another avatar's face
            frame, points = batch.other[index], batch.other_landmarks[index]
        frames.append(frame)
        landmarks.append(points)
    # 3. Expression input: a randomly rotated fixed face crop of that frame.
    crops = expression_input(torch.stack(frames), torch.stack(landmarks), crop_size,
                             settings.augment, generator, scale=settings.face_scale)
    return {"source": batch.source, "source_pose_input": source_pose_input,
            "pose_input": pose_input, "expression_input": crops, "target": batch.driving,
            "source_pose": batch.source_pose, "target_pose": batch.driving_pose}


def _clip(model: nn.Module, max_norm: float | None) -> float | None:
    """Clip the gradients to ``max_norm`` (None: leave them); their norm before clipping."""
    if max_norm is None:
        return None
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))


def generator_losses(model: MotionTrainer, discriminator: PatchDiscriminator,
                     inputs: dict[str, Tensor], weights: LossWeights, adversarial: bool,
                     perceptual: VGGPerceptualLoss | None = None
                     ) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Forward the generator and weigh its losses: returns the total, the generated image
    ``(B, 3, S, S)`` and the terms (floats). The GAN terms are 0 unless ``adversarial``."""
    out = model(inputs["source"], inputs["pose_input"], inputs["expression_input"],
                inputs["source_pose_input"])
    image, target = out["image"], inputs["target"]
    terms = {"reconstruction": reconstruction_loss(image, target),
             "pyramid": pyramid_l1_loss(image, target, weights.pyramid_levels)}
    if adversarial:
        fake = discriminator(image)
        with torch.no_grad():
            real = discriminator(target)
        terms["adversarial"] = generator_adversarial_loss(fake, weights.adversarial_kind)
        terms["feature_matching"] = feature_matching_loss(real, fake)
    if perceptual is not None:
        terms["perceptual"] = perceptual(image, target)
    if weights.pose:
        terms["pose"] = ((out["pose_driving"] - inputs["target_pose"]).abs().mean()
                         + (out["pose_source"] - inputs["source_pose"]).abs().mean()) / 2
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, image, {name: float(value.detach()) for name, value in terms.items()}


def split_inputs(inputs: dict[str, Tensor], shares: int) -> list[dict[str, Tensor]]:
    """``inputs`` (every entry batch-first) cut into ``shares`` equal micro-batches."""
    batch = len(inputs["source"])
    if isinstance(shares, bool) or not isinstance(shares, int) or shares < 1 or batch % shares:
        raise ValueError(f"a batch of {batch} cannot be cut into {shares!r} equal parts")
    size = batch // shares
    return [{name: value[index * size:(index + 1) * size] for name, value in inputs.items()}
            for index in range(shares)]


def average_gradients(module: nn.Module) -> None:
    """Average ``module``'s gradients over the processes of the default process group (one
    all-reduce of a flat buffer). Every process must hold gradients for the same parameters:
    they run the same step."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    for grad, part in zip(grads, flat.split([grad.numel() for grad in grads])):
        grad.copy_(part.view_as(grad))


def _mean_terms(terms: list[dict[str, float]]) -> dict[str, float]:
    return {name: sum(t[name] for t in terms) / len(terms) for name in terms[0]}


def train_step(model: MotionTrainer, discriminator: PatchDiscriminator,
               optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
               inputs: dict[str, Tensor], weights: LossWeights, adversarial: bool = True,
               grad_clip: float | None = 1.0, perceptual: VGGPerceptualLoss | None = None,
               shares: int = 1, average: Callable[[nn.Module], None] | None = None
               ) -> dict[str, float]:
    """One generator step, then one discriminator step (skipped unless ``adversarial``).

    ``shares``: micro-batches, each forwarded and backwarded on its own with its loss divided
    by ``shares`` (gradient accumulation). ``average``: called on each network after its
    backward passes, before clipping (:func:`average_gradients` in a data-parallel run).
    Returns the loss terms, ``generator`` (the weighted total) and ``discriminator``, each the
    mean over micro-batches.
    """
    generator_optimizer, discriminator_optimizer = optimizers
    micro = split_inputs(inputs, shares)
    # 1. Generator: the discriminator judges but is not updated.
    discriminator.requires_grad_(False)
    generator_optimizer.zero_grad(set_to_none=True)
    images, terms = [], []
    for part in micro:
        total, image, parts = generator_losses(model, discriminator, part, weights, adversarial,
                                               perceptual)
        (total / shares).backward()
        images.append(image.detach())
        terms.append({**parts, "generator": float(total.detach())})
    parts = _mean_terms(terms)
    if average is not None:
        average(model)
    if (norm := _clip(model, grad_clip)) is not None:
        parts["generator_grad_norm"] = norm
    generator_optimizer.step()
    # 2. Discriminator: real driving frames against the detached generated ones.
    discriminator.requires_grad_(True)
    parts["discriminator"] = 0.0
    if adversarial:
        discriminator_optimizer.zero_grad(set_to_none=True)
        losses = []
        for part, image in zip(micro, images):
            loss = discriminator_adversarial_loss(discriminator(part["target"]),
                                                  discriminator(image), weights.adversarial_kind)
            (loss / shares).backward()
            losses.append(float(loss.detach()))
        if average is not None:
            average(discriminator)
        _clip(discriminator, grad_clip)
        discriminator_optimizer.step()
        parts["discriminator"] = sum(losses) / shares
    return parts
