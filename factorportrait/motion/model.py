"""DeX-Portrait's disentangled motion trainer (§3.2, Fig. 2a): the generator of its GAN.

    source I_s ─ AppearanceEncoder ─ volume (B, C, D, h, w) ─┐
    I_s (or its pose input) ─ PoseEncoder ─ P_s ─────────────┤ warp by P_d P_s⁻¹
    pose input of I_d ─ PoseEncoder ─ P_d ───────────────────┘      │
    expression input of I_d ─ ExpressionEncoder ─ code (B, K) ─ Decoder (AdaIN) ─ image

The pose input is the driving frame with eyes and mouth masked and the expression input its
rotated (or other-view) fixed face crop (:mod:`factorportrait.motion.augment`); the image is
compared with the driving frame itself (:mod:`factorportrait.motion.losses`). After training,
``pose`` and ``expression`` are the disentangled encoders DeX's diffusion model is driven by.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from factorportrait.io.atomic import atomic_output, atomic_write_bytes
from factorportrait.models.expression_encoder import ExpressionEncoder
from factorportrait.motion.config import MotionTrainerConfig
from factorportrait.motion.decoder import Decoder
from factorportrait.motion.encoders import AppearanceEncoder, PoseEncoder
from factorportrait.motion.geometry import warp_volume

CONFIG_FILE = "motion_trainer.json"
WEIGHTS_FILE = "motion_trainer.safetensors"
FORMAT = "factorportrait-motion-trainer/1"


class MotionTrainer(nn.Module):
    """The motion trainer's generator: appearance, pose and expression encoders, the volume
    warp and the AdaIN decoder. The discriminator
    (:class:`~factorportrait.motion.discriminator.PatchDiscriminator`) is separate, as it
    has its own optimiser."""

    def __init__(self, config: MotionTrainerConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else MotionTrainerConfig()
        self.appearance = AppearanceEncoder(config)
        self.pose = PoseEncoder(config)
        self.expression = ExpressionEncoder(config.expression)
        self.decoder = Decoder(config)

    def _check(self, name: str, images: Tensor, size: int, batch: int) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size) or \
                images.shape[0] != batch:
            raise ValueError(f"MotionTrainer: {name} must be ({batch}, 3, {size}, {size}) in "
                             f"[-1, 1], got {tuple(images.shape)}")

    def forward(self, source: Tensor, pose_input: Tensor, expression_input: Tensor,
                source_pose_input: Tensor | None = None) -> dict[str, Tensor]:
        """Animate ``source`` with the pose of ``pose_input`` and the expression of
        ``expression_input``.

        Args:
            source: ``(B, 3, S, S)`` in [-1, 1], the identity and background.
            pose_input: ``(B, 3, S, S)``, the driving frame with eyes and mouth masked.
            expression_input: ``(B, 3, s, s)``, ``s = config.expression.crop_size``, the
                driving face crop.
            source_pose_input: ``(B, 3, S, S)`` the image the source pose is read from
                (default: ``source``; pass the source masked like ``pose_input`` to keep the
                pose encoder's two inputs alike).
        Returns:
            ``image (B, 3, S, S)`` in [-1, 1], ``pose_source`` and ``pose_driving``
            ``(B, 3, 4)`` RTS poses ``[sR | t]``, ``code (B, K)`` the expression code.
        """
        # 1. Check inputs.
        size, batch = self.config.image_size, source.shape[0]
        source_pose_input = source if source_pose_input is None else source_pose_input
        self._check("source", source, size, batch)
        self._check("pose_input", pose_input, size, batch)
        self._check("source_pose_input", source_pose_input, size, batch)
        self._check("expression_input", expression_input, self.config.expression.crop_size,
                    batch)
        # 2. Encode: appearance volume, both poses in one batch, the expression code.
        volume = self.appearance(source)  # (B, C, D, h, w)
        poses = self.pose(torch.cat([source_pose_input, pose_input]))  # (2B, 3, 4)
        pose_source, pose_driving = poses.split(batch)
        code = self.expression(expression_input)  # (B, K)
        # 3. Warp the volume from the source to the driving pose (P_d P_s⁻¹, §3.2).
        warped = warp_volume(volume, pose_source, pose_driving)
        # 4. Decode with the expression injected by AdaIN.
        image = self.decoder(warped, code)  # (B, 3, S, S)
        return {"image": image, "pose_source": pose_source, "pose_driving": pose_driving,
                "code": code}

    def save_pretrained(self, directory: str | os.PathLike, trained: dict | None = None) -> None:
        """Write ``motion_trainer.json`` (format, config, ``trained`` notes) and
        ``motion_trainer.safetensors`` (all generator weights) atomically into ``directory``,
        plus the expression encoder in its own format (``expression_encoder.*``, so
        :meth:`ExpressionEncoder.from_pretrained` loads the same folder)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_output(directory / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT})
        record = {"format": FORMAT, "config": self.config.to_dict(), "trained": trained or {}}
        atomic_write_bytes(directory / CONFIG_FILE, json.dumps(record, indent=1).encode())
        self.expression.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike,
                        map_location: str | torch.device = "cpu") -> MotionTrainer:
        """Load a folder written by :meth:`save_pretrained` (in eval mode); the encoders are
        ``.pose`` and ``.expression``."""
        from factorportrait.io.tensors import read_safetensors

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"motion trainer: {path} not found (expected a folder "
                                        "written by MotionTrainer.save_pretrained)")
        data = json.loads(config_path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{config_path}: not a motion trainer config (format "
                             f"{data.get('format') if isinstance(data, dict) else None!r}, "
                             f"expected {FORMAT!r})")
        model = cls(MotionTrainerConfig.from_dict(data["config"]))
        state = read_safetensors(weights_path, "motion trainer weights", map_location)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights_path}: weights do not match the config: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}")
        return model.to(map_location).eval()
