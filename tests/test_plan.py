"""The planner: FLOPs against the issue's analytic figure, model states against DeepSpeed's
estimator, and its activation model against measured CPU peaks at small sizes."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from factorportrait import DiTConfig, FactorPortraitDiT
from factorportrait.benchmarks.common import PeakMemory
from factorportrait.benchmarks.plan import activation_bytes, forward_flops, plan, tokens
from tests.conftest import make_conditions


def test_flops_of_81_frames_at_480x832_on_the_1_3b_model():
    config = DiTConfig.wan_1_3b()
    sequence, per_frame = tokens(config, 81, 480, 832)
    assert (sequence, per_frame) == (34320, 1560)
    flops = forward_flops(config, sequence)
    assert 300e12 < flops["total"] < 312e12  # ≈ 306 TFLOP per forward
    assert 0.70 < flops["attention"] / flops["total"] < 0.74  # ≈ 72 % attention


def test_model_states_agree_with_deepspeeds_estimator_and_shard_with_zero():
    report = plan(DiTConfig.wan_1_3b(), 81, 480, 832, gpus=8, zero=2)
    states = sum(report["per_gpu_gib"][k] for k in ("parameters", "gradients", "optimizer"))
    assert abs(states - report["deepspeed_model_states_gib"]) < 0.25 * states
    zero3 = plan(DiTConfig.wan_14b(), 81, 480, 832, gpus=64, zero=3, sp=4)
    assert zero3["tokens_per_gpu"] == 34320 // 4 and zero3["config"]["sp_mode"] == "ulysses"
    assert zero3["per_gpu_gib"]["parameters"] == pytest.approx(14.336e9 * 2 / 64 / 2**30,
                                                               rel=0.01)
    with pytest.raises(ValueError, match="valid degrees"):
        plan(DiTConfig.wan_1_3b(), 81, 480, 832, gpus=14, zero=2, sp=7)


@pytest.mark.parametrize("dim, layers, frames, size", [(256, 4, 17, 256), (256, 8, 9, 384)])
def test_activation_model_matches_measured_cpu_peaks(dim, layers, frames, size, one_thread):
    config = dataclasses.replace(DiTConfig.tiny(), dim=dim, ffn_dim=4 * dim,
                                 num_heads=dim // 128, num_layers=layers)
    torch.manual_seed(0)
    model = FactorPortraitDiT(config).enable_gradient_checkpointing()
    noisy, conditions = make_conditions(config, batch=1, frames=(frames - 1) // 4 + 1,
                                        height=size // 8, width=size // 8)
    timestep = torch.tensor([500.0])
    model(noisy, timestep, conditions).square().mean().backward()  # gradients allocated
    meter = PeakMemory(torch.device("cpu"))
    with meter.measure():
        model(noisy, timestep, conditions).square().mean().backward()
    sequence, _ = tokens(config, frames, size, size)
    planned = activation_bytes(config, sequence, 1, 4, attention_matrix=True) / 2**20
    assert 0.75 < meter.peak_mib / planned < 1.25, (meter.peak_mib, planned)


def test_the_prepared_gpu_check_runs_on_a_cpu_and_refuses_cuda_without_a_gpu(tmp_path):
    """tools/gpu_check.py is what benchmarks/gpu_check.sh runs on a lent GPU; the same code
    runs here at a tiny size, so a GPU session does not spend its minutes on a typo."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "check.json"
    result = subprocess.run(
        [sys.executable, "tools/gpu_check.py", "--preset", "tiny", "--frames", "5", "--size",
         "64x64", "--steps", "2", "--render-steps", "2", "--device", "cpu", "--out", str(out)],
        cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["preset"] == "tiny"
    assert report["training_step_bf16"]["loss_finite"] and report["training_step_bf16"][
        "seconds_per_step"] > 0
    assert report["render_cfg"]["latents_finite"]
    assert 0 < report["bf16_vs_fp32"]["max_relative_diff"] < 0.05  # bf16 is not fp32
    assert set(report["attention"]) >= {"FLASH_ATTN_2_AVAILABLE", "SAGE_ATTN_AVAILABLE"}
    if not torch.cuda.is_available():
        refused = subprocess.run([sys.executable, "tools/gpu_check.py", "--preset", "tiny"],
                                 cwd=root, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines()[-1] == (
            "gpu_check.py: error: no CUDA GPU here (use --device cpu for a smoke run)")


def test_trainable_presets_shrink_gradients_and_optimizer_state_only():
    """Counted on the meta device: a tiny model's presets against its own parameter names."""
    config = DiTConfig.tiny()
    full = plan(config, 9, 64, 64, gpus=1, zero=2)
    lora = plan(config, 9, 64, 64, gpus=1, zero=2, trainable="lora", lora_rank=4)
    attention = plan(config, 9, 64, 64, gpus=1, zero=2, trainable="self_attention_and_new")
    model = FactorPortraitDiT(config)
    new = sum(p.numel() for p in model.condition_parameters())
    self_attn = sum(p.numel() for b in model.blocks for p in b.self_attn.parameters())
    assert attention["trainable_m"] == round((new + self_attn) / 1e6, 2)
    adapters = sum(4 * (layer.in_features + layer.out_features) for b in model.blocks
                   for layer in (b.self_attn.q, b.self_attn.k, b.self_attn.v, b.self_attn.o,
                                 b.cross_attn.q, b.cross_attn.k, b.cross_attn.v, b.cross_attn.o,
                                 b.ffn[0], b.ffn[2]))
    assert lora["trainable_m"] == round((new + adapters) / 1e6, 2)
    for report in (lora, attention):
        assert report["per_gpu_gib"]["activations"] == full["per_gpu_gib"]["activations"]
        assert report["trainable_m"] < full["trainable_m"]
        assert report["step_tflop_per_gpu"] <= full["step_tflop_per_gpu"]
