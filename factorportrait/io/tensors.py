"""Reading weight files at the boundary: one clear ``ValueError`` naming the file for
anything wrong with it, and every tensor checked finite.

- :func:`read_safetensors`: a ``.safetensors`` file -> ``{name: tensor}`` (a truncated or
  foreign file is named, not a ``SafetensorError``);
- :func:`read_torch_weights`: an official ``.pth`` through ``torch.load(weights_only=True)``
  (never unpickling arbitrary objects; a text file or a pickle of objects is named);
- :func:`check_finite`: NaN or Inf in any tensor -> ``ValueError`` naming the tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch

from factorportrait.io.atomic import PathLike


def check_finite(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Return ``state`` when every floating tensor is finite, else raise naming the first bad
    tensor and how many of its entries are NaN/Inf."""
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise ValueError(f"{source}: tensor {name!r} has non-finite values (NaN/Inf) "
                                 f"in {bad} of {tensor.numel()} entries: the file is corrupt "
                                 "or the training run that wrote it diverged")
    return state


def read_safetensors(path: PathLike, what: str, device: str | torch.device = "cpu",
                     finite: bool = True) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file; ``what`` names it in errors ("VAE weights")."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} do not exist")
    try:
        state = load_file(str(path), device=str(device))
    except Exception as err:  # SafetensorError, OSError, header errors
        raise ValueError(f"{what} {path} are unreadable (truncated or not safetensors?): "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                         ) from err
    return check_finite(state, f"{what} {path}") if finite else state


def read_torch_weights(path: PathLike, what: str, finite: bool = True
                       ) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file through ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} do not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (not a zip), KeyError, EOFError
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{what} {path} are not a torch weights file readable with "
                         f"torch.load(weights_only=True) (truncated, another format, or a "
                         f"pickle of objects): {type(err).__name__}: {message[:200]}") from err
    if isinstance(state, dict) and "model_state" in state:
        state = state["model_state"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ValueError(f"{what} {path}: expected a state dict of tensors, got "
                         f"{type(state).__name__}")
    return check_finite(state, f"{what} {path}") if finite else state
