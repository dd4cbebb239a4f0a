"""Loading the pipeline's components from files, with every check done before heavy work.

- :func:`check_checkpoint`: our DiT checkpoint directory (``config.json`` +
  ``model.safetensors``): format, optional expected preset, and every tensor's name and shape
  read from the safetensors header against a model built on the ``meta`` device (no memory).
- :func:`resolve_vae_source` / :func:`load_vae`: the VAE from the same directory
  (``vae_config.json`` + ``vae.safetensors``) or a user path to the official
  ``Wan2.1_VAE.pth`` (or a converted ``.safetensors``).
- :func:`expression_encoder_dir` / :func:`load_expression_encoder`: the expression encoder a
  checkpoint folder ships (``expression_encoder.json`` + ``.safetensors``), as a code source
  that encodes roll-normalised tracked face crops.
- :func:`load_text_encoder`: Wan's umT5-XXL text encoder and its tokenizer from local paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from factorportrait.config import DiTConfig
from factorportrait.models import backbone
from factorportrait.models.vae import CONFIG_FILE as VAE_CONFIG_FILE
from factorportrait.models.vae import WEIGHTS_FILE as VAE_WEIGHTS_FILE
from factorportrait.models.vae import VAEConfig, WanVAE
from factorportrait.models.weights import (CONFIG_FILE, WEIGHTS_FILE, WeightsMismatchError,
                                           check_weights_header, read_config)

TEXT_CONTEXT_LENGTH = 512  # Wan pads umT5 prompts to 512 tokens


def check_checkpoint(directory: str | os.PathLike, preset: Optional[str] = None) -> DiTConfig:
    """Validate a DiT checkpoint directory without loading its weights -> its config.

    Raises ``FileNotFoundError`` (missing directory / files), ``WeightsMismatchError`` (a config
    other than ``preset``; tensors missing, unexpected or mis-shaped in ``model.safetensors``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    config = read_config(directory)
    if preset is not None and config != DiTConfig.preset(preset):
        raise WeightsMismatchError(f"checkpoint {directory} holds {config.describe()}, not the "
                                   f"requested preset {preset!r}")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint {directory}: {WEIGHTS_FILE} is missing (next to "
                                f"{CONFIG_FILE})")
    check_weights_header(weights, config)
    return config


def resolve_vae_source(directory: str | os.PathLike,
                       vae_path: Optional[str | os.PathLike] = None) -> Path:
    """Where the VAE comes from: ``vae_path`` (a ``Wan2.1_VAE.pth`` / ``.safetensors`` file or
    a directory with ``vae_config.json``), else ``directory`` when it holds our VAE files."""
    if vae_path is not None:
        path = Path(vae_path)
        if not path.exists():
            raise FileNotFoundError(f"vae_path {path} does not exist (expected Wan2.1_VAE.pth, "
                                    f"a .safetensors file or a directory with {VAE_CONFIG_FILE})")
        return check_vae_source(path)
    directory = Path(directory)
    if (directory / VAE_CONFIG_FILE).is_file() and (directory / VAE_WEIGHTS_FILE).is_file():
        return check_vae_source(directory)
    raise FileNotFoundError(f"no VAE for checkpoint {directory}: it has no {VAE_CONFIG_FILE} + "
                            f"{VAE_WEIGHTS_FILE}; pass vae_path='…/Wan2.1_VAE.pth'")


TORCH_FILE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; a legacy pickle


def check_vae_source(path: Path) -> Path:
    """The cheap part of loading a VAE, before any weights are read: a folder's config parses
    and its safetensors header reads; a ``.safetensors`` file's header reads; a ``.pth`` file
    starts like a ``torch.save`` file. ``ValueError`` naming the file otherwise."""
    from safetensors import safe_open

    header = path / VAE_WEIGHTS_FILE if path.is_dir() else path
    if path.is_dir():
        try:
            VAEConfig(**json.loads((path / VAE_CONFIG_FILE).read_text())["config"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path / VAE_CONFIG_FILE} is not a VAE config: {err}") from err
    if header.suffix == ".safetensors":
        try:
            with safe_open(str(header), framework="pt") as handle:
                list(handle.keys())
        except Exception as err:  # SafetensorError, OSError
            raise ValueError(f"VAE weights {header} are unreadable (truncated or not "
                             f"safetensors?): {str(err).splitlines()[0]}") from err
        return path
    with open(header, "rb") as handle:
        start = handle.read(4)
    if not start.startswith(TORCH_FILE_MAGIC):
        raise ValueError(f"vae_path {header} is not a torch weights file (Wan2.1_VAE.pth) or "
                         f".safetensors file: it starts with {start!r}")
    return path


def load_vae(source: Path, config: Optional[VAEConfig] = None) -> WanVAE:
    """Load the VAE from :func:`resolve_vae_source`'s answer."""
    return WanVAE.load(source, config)


def expression_encoder_dir(directory: str | os.PathLike) -> Optional[Path]:
    """``directory`` when it ships an expression encoder, else None; a half-present encoder
    (one of its two files) is an error naming the missing one."""
    from factorportrait.models.expression_encoder import CONFIG_FILE as ENCODER_CONFIG
    from factorportrait.models.expression_encoder import WEIGHTS_FILE as ENCODER_WEIGHTS

    directory = Path(directory)
    present = [(directory / name).is_file() for name in (ENCODER_CONFIG, ENCODER_WEIGHTS)]
    if not any(present):
        return None
    if not all(present):
        missing = ENCODER_WEIGHTS if present[0] else ENCODER_CONFIG
        raise FileNotFoundError(f"checkpoint {directory}: {missing} is missing (the expression "
                                "encoder needs both of its files)")
    return directory


def load_expression_encoder(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    """The folder's :class:`~factorportrait.models.expression_encoder.ExpressionEncoder` as
    an :class:`~factorportrait.expression.EncoderCodeSource` on roll-normalised face crops
    (FactorPortrait supp. §8.1; the pipeline passes the tracked boxes)."""
    from factorportrait.expression.codes import EncoderCodeSource
    from factorportrait.models.expression_encoder import ExpressionEncoder

    encoder = ExpressionEncoder.from_pretrained(directory, map_location=device)
    return EncoderCodeSource(encoder, roll_normalise=True)


class UMT5TextEncoder:
    """Wan's umT5-XXL encoder with its tokenizer: ``prompt -> (1, 512, 4096)`` context, padded
    positions zeroed as in Wan / diffsynth's ``encode_prompt``."""

    def __init__(self, encoder: torch.nn.Module, tokenizer) -> None:
        self.encoder = encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.dim = int(encoder.dim)

    @torch.no_grad()
    def __call__(self, prompt: str) -> Tensor:
        device = next(self.encoder.parameters()).device
        ids, mask = self.tokenizer(prompt, return_mask=True, add_special_tokens=True)
        ids, mask = ids.to(device), mask.to(device)
        context = self.encoder(ids, mask)  # (1, 512, 4096)
        length = int(mask.gt(0).sum())
        context[:, length:] = 0
        return context


def load_text_encoder(weights_path: str | os.PathLike, tokenizer_path: str | os.PathLike,
                      device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.bfloat16) -> UMT5TextEncoder:
    """Wan's umT5-XXL text encoder from local files.

    Args:
        weights_path: ``models_t5_umt5-xxl-enc-bf16.pth`` (read with
            ``torch.load(weights_only=True)``) or its ``.safetensors`` conversion.
        tokenizer_path: the ``google/umt5-xxl`` tokenizer folder shipped with Wan 2.1.
    """
    weights, tokenizer_dir = Path(weights_path), Path(tokenizer_path)
    if not weights.is_file():
        raise FileNotFoundError(f"text encoder weights {weights} do not exist (Wan 2.1's "
                                f"models_t5_umt5-xxl-enc-bf16.pth)")
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(f"tokenizer folder {tokenizer_dir} does not exist (Wan 2.1's "
                                f"google/umt5-xxl folder)")
    from factorportrait.io.tensors import read_safetensors, read_torch_weights

    if weights.suffix == ".safetensors":
        state = read_safetensors(weights, "text encoder weights")
    else:
        state = read_torch_weights(weights, "text encoder weights")
    encoder, tokenizer = backbone.wan_text_encoder(tokenizer_dir, TEXT_CONTEXT_LENGTH)
    encoder.load_state_dict(state)
    return UMT5TextEncoder(encoder.to(device, dtype), tokenizer)
