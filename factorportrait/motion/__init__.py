"""DeX-Portrait's disentangled motion trainer (§3.2, Fig. 2a and 3): a GAN whose pose and
expression encoders learn head pose as an explicit RTS transform and expression as a latent
code, by re-animating a source portrait to a driving frame.

Modules: ``config`` (:class:`MotionTrainerConfig`), ``geometry`` (RTS poses, the volume
warp), ``encoders`` (appearance, pose), ``decoder`` (AdaIN generator), ``discriminator``
(multi-scale PatchGAN), ``model`` (:class:`MotionTrainer`), ``losses``, ``augment`` (pose and
expression inputs, cross-view driving); training: ``data`` (multi-view synthetic samples with
ground-truth poses), ``step`` (one GAN step), ``train`` (the resumable loop, recipe
``recipes/motion.yaml``), ``evaluate`` (held-out identities and baselines); ``sources``
(the pose and expression encoders as pipeline sources on tracked frames).
"""

from factorportrait.motion.augment import (
                                           ViewGroup,
                                           cross_view_driving,
                                           expression_input,
                                           eye_mouth_mask,
                                           landmark_face_boxes,
                                           mask_eyes_and_mouth,
)
from factorportrait.motion.config import MotionTrainerConfig
from factorportrait.motion.data import (
                                           MotionBatch,
                                           MotionSampling,
                                           render_motion_batch,
                                           step_generator,
)
from factorportrait.motion.decoder import AdaIN, Decoder
from factorportrait.motion.discriminator import PatchDiscriminator
from factorportrait.motion.encoders import AppearanceEncoder, PoseEncoder
from factorportrait.motion.evaluate import evaluate_motion
from factorportrait.motion.geometry import rotation_6d_to_matrix, rts_pose, warp_volume
from factorportrait.motion.losses import (
                                           VGGPerceptualLoss,
                                           discriminator_adversarial_loss,
                                           feature_matching_loss,
                                           generator_adversarial_loss,
                                           load_vgg_perceptual,
                                           pyramid_l1_loss,
                                           reconstruction_loss,
)
from factorportrait.motion.model import MotionTrainer
from factorportrait.motion.sources import (
                                           MotionExpressionSource,
                                           MotionPoseSource,
                                           load_motion_sources,
)
from factorportrait.motion.step import InputSettings, LossWeights, motion_inputs, train_step
from factorportrait.motion.train import MotionTrainConfig, config_from_recipe, train_motion

__all__ = [
    "AdaIN", "AppearanceEncoder", "Decoder", "InputSettings", "LossWeights", "MotionBatch",
    "MotionExpressionSource", "MotionPoseSource", "MotionSampling", "MotionTrainConfig",
    "MotionTrainer", "MotionTrainerConfig", "PatchDiscriminator", "PoseEncoder",
    "VGGPerceptualLoss", "ViewGroup", "config_from_recipe", "cross_view_driving",
    "discriminator_adversarial_loss", "evaluate_motion", "expression_input", "eye_mouth_mask",
    "feature_matching_loss", "generator_adversarial_loss", "landmark_face_boxes",
    "load_motion_sources", "load_vgg_perceptual", "mask_eyes_and_mouth", "motion_inputs",
    "pyramid_l1_loss", "reconstruction_loss", "render_motion_batch", "rotation_6d_to_matrix",
    "rts_pose", "step_generator", "train_motion", "train_step", "warp_volume",
]
