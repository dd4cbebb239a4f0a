"""LoRA adapters on the DiT through peft: inject, save with the base's identity, load, merge.

    apply_lora(model, spec)        peft.inject_adapter_in_model on every block's attention and
                                   FFN projections (``blocks.N.self_attn.q`` …); our names stay
                                   readable: ``blocks.0.self_attn.q.base_layer.weight``,
                                   ``blocks.0.self_attn.q.lora_A.default.weight``
    save_adapter(model, path)      ``adapter.safetensors``: the LoRA A/B matrices, the full
                                   values of the other trained parameters (by default the new
                                   condition paths) and the base's identity
    merge_adapters(model, [...])   check each adapter against the base, inject, peft merge,
                                   strip the wrappers -> a plain FactorPortraitDiT
    merged_state_dict(model, sd)   the same merge on a state dict (final/ and final-ema/)

The base identity is the base's ``DiTConfig`` and :func:`base_digest`: sha256 over every
tensor's name, dtype, shape and 4096 evenly spaced values (float32 bytes) of the base weights
the adapter does not carry in full. Reading a few values per tensor keeps it cheap for the 14B
model (it is not a checksum against deliberate tampering; any other base or fine-tune
differs). An adapter's full-value parameters ``p`` merge as ``base + scale · (p − base)``, so
the scale acts on them as on the LoRA delta and several adapters add up.

peft is imported lazily: only LoRA training and loading adapters need it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from factorportrait.config import DiTConfig

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_FORMAT = "factorportrait-lora/1"
TARGET_MODULES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                  "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
                  "ffn.0", "ffn.2")  # the projections of a diffsynth DiTBlock
DIGEST_SAMPLES = 4096
PathLike = str | os.PathLike


@dataclass(frozen=True)
class LoraSpec:
    """The recipe's ``model.lora``: rank ``r``, ``alpha`` (the update is scaled by
    ``alpha / rank``), dropout on the LoRA input, and which projections of every block get an
    adapter (a subset of :data:`TARGET_MODULES`)."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple = TARGET_MODULES

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"model.lora.rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"model.lora.alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout!r}")
        unknown = [name for name in self.target_modules if name not in TARGET_MODULES]
        if not self.target_modules or unknown:
            raise ValueError(f"model.lora.target_modules must be a non-empty subset of "
                             f"{list(TARGET_MODULES)}, got {list(self.target_modules)}")

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": float(self.alpha), "dropout": float(self.dropout),
                "target_modules": list(self.target_modules)}

    def peft_config(self) -> Any:
        """A ``peft.LoraConfig`` matching exactly ``blocks.<N>.<target>`` (DeX modules that
        also have ``q``/``k``/``v``/``o`` projections stay untouched)."""
        peft = _peft()
        targets = "|".join(re.escape(name) for name in self.target_modules)
        return peft.LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                               target_modules=rf"blocks\.\d+\.({targets})",
                               init_lora_weights=True)  # B = 0: starts as the base


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise ImportError("LoRA needs peft: pip install 'peft==0.21.2'") from err
    return peft


# ---------------------------------------------------------------------------- injection

def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{module name: peft LoraLayer}`` of ``model`` (empty without adapters)."""
    found = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            found[name] = module
    return found


def has_lora(model: nn.Module) -> bool:
    return bool(lora_layers(model))


def apply_lora(model: nn.Module, spec: LoraSpec, adapter_name: str = "default") -> nn.Module:
    """Inject LoRA layers (peft, in place) into ``model``'s block projections; returns it.
    The base weights keep their values (as ``<name>.base_layer.*``); ``lora_B`` is zero, so
    the model's output is unchanged until it trains."""
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        raise ValueError("model.trainable=lora does not support ZeRO-3 partitioned models; "
                         "use ZeRO-2 (recipes/deepspeed/zero2.json)")
    with warnings.catch_warnings():  # a second adapter is intended (merge_adapters)
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        return _peft().inject_adapter_in_model(spec.peft_config(), model, adapter_name)


def is_lora_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def original_name(key: str) -> str:
    """``blocks.0.self_attn.q.base_layer.weight`` -> ``blocks.0.self_attn.q.weight``."""
    return key.replace(".base_layer.", ".")


def lora_state_dict(model: nn.Module, state: Optional[dict[str, torch.Tensor]] = None
                    ) -> dict[str, torch.Tensor]:
    """The LoRA matrices of ``model`` (or of ``state``, a state dict of it), keyed as in the
    model (``blocks.0.self_attn.q.lora_A.default.weight``)."""
    state = model.state_dict() if state is None else state
    return {key: value for key, value in state.items() if is_lora_key(key)}


# ---------------------------------------------------------------------------- identity

def base_digest(state: dict[str, torch.Tensor], skip: Sequence[str] = ()) -> str:
    """sha256 of the base weights in ``state`` (original names; LoRA tensors and ``skip``
    left out): per tensor its name, shape and :data:`DIGEST_SAMPLES` evenly spaced values,
    rounded to bfloat16, as float32 bytes (module docstring). Rounding (and leaving the dtype
    out) makes a base trained in fp32 and the same base cast to bf16 by a mixed-precision
    engine one identity."""
    skipped = set(skip)
    sha = hashlib.sha256()
    base = {original_name(k): v for k, v in state.items() if not is_lora_key(k)}
    for name in sorted(set(base) - skipped):
        tensor = base[name].detach().reshape(-1)
        if tensor.numel() > DIGEST_SAMPLES:
            index = torch.linspace(0, tensor.numel() - 1, DIGEST_SAMPLES).long()
            tensor = tensor[index.to(tensor.device)]
        values = tensor.to("cpu", torch.bfloat16).float().contiguous().numpy().tobytes()
        sha.update(f"{name}|{tuple(base[name].shape)}|".encode())
        sha.update(values)
    return sha.hexdigest()


def trained_full_names(model: nn.Module) -> list[str]:
    """Original names of the trainable parameters that are not LoRA matrices (the condition
    paths under ``model.trainable=lora``): the adapter stores their whole values."""
    return sorted(original_name(name) for name, p in model.named_parameters()
                  if p.requires_grad and not is_lora_key(name))


# ---------------------------------------------------------------------------- files

def save_adapter(model: nn.Module, path: PathLike,
                 state: Optional[dict[str, torch.Tensor]] = None,
                 full: Optional[Sequence[str]] = None) -> None:
    """Write ``model``'s adapter to ``path`` (atomically): ``lora.<key>`` tensors (adapter
    name dropped), ``full.<name>`` tensors for ``full`` (default: :func:`trained_full_names`)
    and metadata — format, the LoRA spec, the base's config and :func:`base_digest`.

    ``state``: a state dict of ``model`` to save instead of its current values (EMA)."""
    from safetensors.torch import save_file

    from factorportrait.io.atomic import atomic_output
    from factorportrait.models.weights import config_record

    layers = lora_layers(model)
    if not layers:
        raise ValueError("save_adapter: the model has no LoRA layers (apply_lora first)")
    state = model.state_dict() if state is None else state
    full = trained_full_names(model) if full is None else sorted(full)
    by_original = {original_name(k): v for k, v in state.items() if not is_lora_key(k)}
    tensors = {f"lora.{_strip_adapter(k)}": v for k, v in lora_state_dict(model, state).items()}
    tensors.update({f"full.{name}": by_original[name] for name in full})
    metadata = {"format": ADAPTER_FORMAT, "lora": json.dumps(_spec_of(layers).to_dict()),
                "base_config": json.dumps(config_record(model.config)),
                "base_digest": base_digest(state, full), "full": json.dumps(full)}
    with atomic_output(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata=metadata)


@dataclass(frozen=True)
class Adapter:
    """An adapter file read back: its spec, base identity, LoRA and full-value tensors."""

    path: str
    spec: LoraSpec
    base_config: DiTConfig
    base_digest: str
    lora: dict[str, torch.Tensor]
    full: dict[str, torch.Tensor]


def read_adapter_header(path: PathLike) -> tuple[LoraSpec, DiTConfig, str]:
    """``(spec, base config, base digest)`` from an adapter file's metadata (no tensors)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"LoRA adapter {path} does not exist")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != ADAPTER_FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}")
        spec = LoraSpec(**json.loads(metadata["lora"]))
        config = DiTConfig.from_dict(json.loads(metadata["base_config"])["config"])
        return spec, config, metadata["base_digest"]
    except Exception as err:  # noqa: BLE001 - any unreadable header is one message
        raise ValueError(f"{path} is not a FactorPortrait LoRA adapter ({ADAPTER_FORMAT}): "
                         f"{err}") from None


def read_adapter(path: PathLike) -> Adapter:
    from safetensors.torch import load_file

    spec, config, digest = read_adapter_header(path)
    tensors = load_file(str(path))
    lora = {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")}
    full = {k[len("full."):]: v for k, v in tensors.items() if k.startswith("full.")}
    return Adapter(str(path), spec, config, digest, lora, full)


def check_base(adapter: Adapter, config: DiTConfig, state: dict[str, torch.Tensor]) -> None:
    """One-line ``ValueError`` unless ``state`` (a plain model's) is the adapter's base."""
    if config != adapter.base_config:
        raise ValueError(f"LoRA adapter {adapter.path} was trained on a "
                         f"{adapter.base_config.describe()} DiT, not this {config.describe()}")
    found = base_digest(state, adapter.full)
    if found != adapter.base_digest:
        raise ValueError(f"LoRA adapter {adapter.path} belongs to another base model (weights "
                         f"digest {adapter.base_digest[:12]}, this model {found[:12]}): load "
                         f"the checkpoint it was trained from")


def _strip_adapter(key: str) -> str:
    """``….lora_A.default.weight`` -> ``….lora_A.weight``."""
    return re.sub(r"\.(lora_[AB])\.[^.]+\.", r".\1.", key)


def _spec_of(layers: dict[str, nn.Module]) -> LoraSpec:
    layer = next(iter(layers.values()))
    name = next(iter(layer.lora_A))
    targets = {re.sub(r"^blocks\.\d+\.", "", module) for module in layers}
    dropout = layer.lora_dropout[name]
    return LoraSpec(rank=int(layer.r[name]), alpha=float(layer.lora_alpha[name]),
                    dropout=float(getattr(dropout, "p", 0.0)),
                    target_modules=tuple(t for t in TARGET_MODULES if t in targets))


# ---------------------------------------------------------------------------- merging

def load_adapter(model: nn.Module, path: PathLike, scale: float = 1.0,
                 adapter_name: Optional[str] = None) -> nn.Module:
    """Check ``path`` against the plain ``model``, inject it as adapter ``adapter_name``
    (default: the file's stem) scaled by ``scale``, and set its full-value parameters to
    ``base + scale · (p − base)``. In place; returns ``model`` (still with peft layers:
    :func:`merge_lora` removes them)."""
    adapter = read_adapter(path)
    state = model.state_dict()
    check_base(adapter, model.config, state)
    _inject(model, adapter, float(scale), adapter_name or re.sub(r"\W", "_", Path(path).stem),
            _full_base(state, [adapter]))
    return model


def _inject(model: nn.Module, adapter: Adapter, scale: float, name: str,
            base: dict[str, torch.Tensor]) -> None:
    """Adapter ``name`` into ``model``; ``base``: the plain model's values of the full-value
    parameters (:func:`_full_base`), which they are interpolated from."""
    apply_lora(model, adapter.spec, name)
    values = {re.sub(r"\.(lora_[AB])\.", rf".\1.{name}.", key): value
              for key, value in adapter.lora.items()}
    result = model.load_state_dict(values, strict=False)
    expected = {k for k in model.state_dict() if is_lora_key(k) and f".{name}." in k}
    if result.unexpected_keys or expected - set(values):
        raise ValueError(f"LoRA adapter {adapter.path} does not fit the model: missing "
                         f"{sorted(expected - set(values))[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]}")
    for layer in lora_layers(model).values():
        layer.set_scale(name, scale)
    parameters = {original_name(k): p for k, p in model.named_parameters()}
    with torch.no_grad():
        for key, value in adapter.full.items():
            if key not in parameters:
                raise ValueError(f"LoRA adapter {adapter.path} holds {key!r}, which the model "
                                 f"lacks")
            target = parameters[key]
            target.add_(value.to(target) - base[key].to(target), alpha=scale)  # base + s·Δ


def _full_base(state: dict[str, torch.Tensor], adapters: Sequence[Adapter]
               ) -> dict[str, torch.Tensor]:
    """Copies of the plain model's values of every parameter an adapter holds in full."""
    names = {name for adapter in adapters for name in adapter.full}
    by_original = {original_name(k): v for k, v in state.items()}
    return {name: by_original[name].detach().clone() for name in names if name in by_original}


def merge_lora(model: nn.Module) -> nn.Module:
    """peft's merge (every adapter, at its scale) then unload: each LoRA layer is replaced
    by its base layer, so ``state_dict()`` has the original keys only. In place; returns it."""
    for name, layer in lora_layers(model).items():
        layer.merge(adapter_names=list(layer.lora_A.keys()))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child,
                layer.get_base_layer())
    if "peft_config" in vars(model):
        del model.peft_config
    return model


def merge_adapters(model: nn.Module, paths: Sequence[PathLike],
                   scales: Optional[Sequence[float]] = None) -> nn.Module:
    """Load every adapter in ``paths`` (each checked against the plain ``model`` before any
    is applied) and merge them: a plain model, no peft wrappers left."""
    paths = [Path(p) for p in paths]
    scales = [1.0] * len(paths) if scales is None else [float(s) for s in scales]
    if len(scales) != len(paths):
        raise ValueError(f"lora_scale: expected one scale per adapter ({len(paths)}), got "
                         f"{len(scales)}")
    adapters = [read_adapter(path) for path in paths]
    state = model.state_dict()
    base = _full_base(state, adapters)
    for adapter in adapters:  # every identity first, on the untouched base
        check_base(adapter, model.config, state)
    for index, (adapter, scale) in enumerate(zip(adapters, scales)):
        _inject(model, adapter, scale, f"adapter{index}", base)
    return merge_lora(model)


def check_adapters(paths: Sequence[PathLike], scales: Optional[Sequence[float]],
                   config: DiTConfig) -> None:
    """Before any weights are read: every adapter file's header, its base config against
    ``config`` and one scale per adapter (the weights digest is checked when merging)."""
    if scales is not None and len(scales) != len(paths):
        raise ValueError(f"lora_scale: expected one scale per adapter ({len(paths)}), got "
                         f"{len(scales)}")
    for path in paths:
        _, base_config, _ = read_adapter_header(path)
        if base_config != config:
            raise ValueError(f"LoRA adapter {path} was trained on a {base_config.describe()} "
                             f"DiT, not this {config.describe()}")


def merged_state_dict(model: nn.Module, state: Optional[dict[str, torch.Tensor]] = None
                      ) -> dict[str, torch.Tensor]:
    """``state`` (a state dict of the LoRA ``model``; default its own) with every LoRA layer
    merged as peft does (``W + scaling · B A``), keyed by the original names."""
    state = model.state_dict() if state is None else state
    merged = {original_name(k): v.detach() for k, v in state.items() if not is_lora_key(k)}
    for name, layer in lora_layers(model).items():
        weight = merged[f"{name}.weight"].clone()
        for adapter in layer.lora_A:
            a = state[f"{name}.lora_A.{adapter}.weight"].to(torch.float32)
            b = state[f"{name}.lora_B.{adapter}.weight"].to(torch.float32)
            weight += (layer.scaling[adapter] * (b @ a)).to(weight.dtype)
        merged[f"{name}.weight"] = weight
    return merged


def export_merged(model: nn.Module, directory: PathLike, state: dict[str, torch.Tensor],
                  config: DiTConfig, trained: Optional[dict] = None) -> None:
    """A LoRA stage's ``final/``: the merged plain weights (``config.json`` +
    ``model.safetensors``, loadable without peft) and ``adapter.safetensors``; written to a
    staging folder that then replaces ``directory``."""
    from factorportrait.models.weights import replace_directory
    from factorportrait.training.checkpoint import save_weights

    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_weights(staging, merged_state_dict(model, state), config, trained)
    save_adapter(model, staging / ADAPTER_FILE, state)
    replace_directory(staging, directory)


__all__ = ["ADAPTER_FILE", "Adapter", "LoraSpec", "TARGET_MODULES", "apply_lora",
           "base_digest", "check_base", "export_merged", "has_lora", "load_adapter",
           "lora_state_dict", "merge_adapters", "merge_lora", "merged_state_dict",
           "read_adapter", "read_adapter_header", "save_adapter"]
