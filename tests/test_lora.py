"""LoRA adapters (training/lora.py): zero-init equals the base, merge equals unmerged, adapter
files round-trip and refuse another base, merged checkpoints load without peft."""

import pytest
import torch

from factorportrait import DiTConfig, FactorPortraitDiT
from factorportrait.training import lora
from factorportrait.training.optim import select_trainable
from tests.conftest import make_conditions


def base_model(seed: int = 0) -> FactorPortraitDiT:
    torch.manual_seed(seed)
    model = FactorPortraitDiT(DiTConfig.tiny()).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # make the zero-initialised condition paths live
        for param in model.expression_controller.output.parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.05)
    return model


def perturb(model, scale: float = 0.05, seed: int = 3) -> None:
    """Random LoRA B (peft starts it at zero) and condition-path weights, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name or name.startswith("expression_controller"):
                param.add_(torch.randn(param.shape, generator=g) * scale)


def output(model) -> torch.Tensor:
    noisy, conditions = make_conditions(model.config, batch=2, frames=3)
    with torch.no_grad():
        return model(noisy, torch.tensor([37.0, 811.0]), conditions)


def lora_model(seed: int = 0, **spec) -> FactorPortraitDiT:
    model = base_model(seed)
    select_trainable(model, "lora", lora.LoraSpec(rank=4, alpha=8, **spec))
    return model


def test_zero_initialised_lora_equals_the_base_exactly():
    reference = output(base_model())
    model = lora_model()
    assert lora.has_lora(model) and len(lora.lora_layers(model)) == 2 * 10  # 2 blocks
    assert torch.equal(output(model), reference)


def test_targets_are_the_block_projections_only():
    names = set(lora.lora_layers(lora_model(target_modules=["self_attn.q", "ffn.2"])))
    assert names == {"blocks.0.self_attn.q", "blocks.1.self_attn.q", "blocks.0.ffn.2",
                     "blocks.1.ffn.2"}
    with pytest.raises(ValueError, match="model.lora.target_modules"):
        lora.LoraSpec(target_modules=["self_attn.qq"])
    with pytest.raises(ValueError, match="model.lora.rank"):
        lora.LoraSpec(rank=0)


def test_merged_equals_unmerged_and_has_only_the_original_keys():
    model = lora_model()
    perturb(model)
    unmerged = output(model)
    assert not torch.equal(unmerged, output(base_model()))
    by_state = lora.merged_state_dict(model)
    merged = lora.merge_lora(model)
    assert not lora.has_lora(merged)
    assert set(merged.state_dict()) == set(base_model().state_dict())
    assert (output(merged) - unmerged).abs().max().item() <= 1e-5
    for name, value in merged.state_dict().items():  # our state-dict merge = peft's
        assert torch.allclose(by_state[name], value, atol=1e-6), name


def test_adapter_round_trip_onto_the_base(tmp_path):
    model = lora_model()
    perturb(model)
    expected = output(model)
    lora.save_adapter(model, tmp_path / "a.safetensors")
    spec, config, _ = lora.read_adapter_header(tmp_path / "a.safetensors")
    assert (spec.rank, spec.alpha, config) == (4, 8.0, DiTConfig.tiny())
    loaded = lora.load_adapter(base_model(), tmp_path / "a.safetensors")
    assert (output(loaded) - expected).abs().max().item() <= 1e-6
    merged = lora.merge_adapters(base_model(), [tmp_path / "a.safetensors"])
    assert (output(merged) - expected).abs().max().item() <= 1e-5
    half = lora.merge_adapters(base_model(), [tmp_path / "a.safetensors"] * 2, [0.5, 0.5])
    assert (output(half) - expected).abs().max().item() <= 1e-5  # scales add up


def test_scale_zero_gives_the_base(tmp_path):
    model = lora_model()
    perturb(model)
    lora.save_adapter(model, tmp_path / "a.safetensors")
    merged = lora.merge_adapters(base_model(), [tmp_path / "a.safetensors"], [0.0])
    assert (output(merged) - output(base_model())).abs().max().item() <= 1e-6


def test_another_base_is_refused_in_one_line(tmp_path):
    model = lora_model()
    perturb(model)
    lora.save_adapter(model, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="belongs to another base model") as error:
        lora.merge_adapters(base_model(seed=1), [tmp_path / "a.safetensors"])
    assert "\n" not in str(error.value)
    other = FactorPortraitDiT(DiTConfig.tiny(num_layers=3))
    with pytest.raises(ValueError, match="was trained on a"):
        lora.load_adapter(other, tmp_path / "a.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="is not a FactorPortrait LoRA adapter"):
        lora.read_adapter_header(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="one scale per adapter"):
        lora.merge_adapters(base_model(), [tmp_path / "a.safetensors"], [1.0, 2.0])


def test_merged_checkpoint_loads_with_from_pretrained(tmp_path):
    model = lora_model()
    perturb(model)
    expected = output(model)
    lora.merge_lora(model).save_pretrained(tmp_path / "merged")
    loaded = FactorPortraitDiT.from_pretrained(tmp_path / "merged").eval()
    assert (output(loaded) - expected).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------------- pipeline and CLI

@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A tiny checkpoint (DiT + VAE), an adapter trained (perturbed) on it, one for another
    base, a reference PNG and a control track."""
    import copy

    from PIL import Image

    from tests.pipeline_helpers import driving_track, reference_image, tiny_dit, tiny_vae

    root = tmp_path_factory.mktemp("lora-cli")
    tiny_dit().save_pretrained(root / "ckpt")
    tiny_vae().save_pretrained(root / "ckpt")
    model = copy.deepcopy(tiny_dit())
    select_trainable(model, "lora", lora.LoraSpec(rank=4, alpha=8))
    perturb(model)
    lora.save_adapter(model, root / "adapter.safetensors")
    other = lora_model(seed=5)
    lora.save_adapter(other, root / "other.safetensors")
    Image.fromarray(reference_image().numpy()).save(root / "face.png")
    driving_track(frames=5).save(root / "perf.safetensors")
    return root, lora.merge_lora(model).eval()


def test_pipeline_merges_adapters_into_a_plain_dit(adapted):
    from factorportrait.pipeline import FactorPortraitPipeline

    root, merged = adapted
    pipe = FactorPortraitPipeline.from_pretrained(root / "ckpt",
                                                  lora=[root / "adapter.safetensors"])
    assert not lora.has_lora(pipe.dit)
    assert (output(pipe.dit.eval()) - output(merged)).abs().max().item() <= 1e-5
    plain = FactorPortraitPipeline.from_pretrained(root / "ckpt", lora=[
        root / "adapter.safetensors"], lora_scale=[0.0])
    from tests.pipeline_helpers import tiny_dit
    assert (output(plain.dit.eval()) - output(tiny_dit())).abs().max().item() <= 1e-6


def test_cli_lora_errors_exit_2_in_one_line(adapted, tmp_path, capsys):
    from factorportrait.cli.render import main

    root, _ = adapted
    common = [str(root / "face.png"), "--checkpoint", str(root / "ckpt"), "--control-track",
              str(root / "perf.safetensors"), "--steps", "1", "--out", str(tmp_path / "o.mp4")]
    cases = [(["--lora", str(root / "adapter.safetensors"), "--lora-scale", "1",
               "--lora-scale", "2"], "--lora-scale: give one per --lora (1), got 2"),
             (["--lora", str(tmp_path / "missing.safetensors")], "does not exist"),
             (["--lora", str(root / "other.safetensors")], "belongs to another base model")]
    for extra, message in cases:
        assert main(common + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and err.startswith("factorportrait-render")
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.slow
def test_cli_renders_with_a_lora(adapted, tmp_path):
    from factorportrait.cli.render import main

    root, _ = adapted
    out = tmp_path / "out.mp4"
    assert main([str(root / "face.png"), "--checkpoint", str(root / "ckpt"), "--control-track",
                 str(root / "perf.safetensors"), "--steps", "1", "--lora",
                 str(root / "adapter.safetensors"), "--lora-scale", "0.5", "--out",
                 str(out)]) == 0
    assert out.stat().st_size > 0


def test_merge_lora_tool_writes_a_plain_checkpoint(adapted, tmp_path, capsys):
    import importlib.util

    from factorportrait.models.weights import read_trained

    root, merged = adapted
    spec = importlib.util.spec_from_file_location("merge_lora", lora_tool_path())
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(root / "ckpt"), str(root / "adapter.safetensors"),
                      str(tmp_path / "out")]) == 0
    loaded = FactorPortraitDiT.from_pretrained(tmp_path / "out").eval()
    assert (output(loaded) - output(merged)).abs().max().item() <= 1e-5
    assert read_trained(tmp_path / "out") == read_trained(root / "ckpt")
    assert tool.main([str(root / "ckpt"), str(root / "other.safetensors"),
                      str(tmp_path / "bad")]) == 2
    assert "belongs to another base model" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def lora_tool_path():
    from pathlib import Path
    return Path(__file__).resolve().parents[1] / "tools" / "merge_lora.py"
