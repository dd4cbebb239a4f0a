"""Wan checkpoint loading and our own save/load."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from factorportrait import DiTConfig, FactorPortraitDiT
from factorportrait.models.weights import WeightsMismatchError


def test_from_wan_copies_pretrained_and_keeps_new_paths_zero(wan_checkpoint):
    path, wan = wan_checkpoint
    model = FactorPortraitDiT.from_wan(path, DiTConfig.tiny())
    embed = model.patch_embedding.weight
    assert torch.equal(embed[:, :16], wan.patch_embedding.weight)
    assert torch.all(embed[:, 16:] == 0)
    assert torch.equal(model.blocks[1].self_attn.q.weight, wan.blocks[1].self_attn.q.weight)
    assert torch.equal(model.head.modulation, wan.head.modulation)
    assert torch.all(model.expression_controller.output.weight == 0)


def test_sharded_checkpoint_with_index(wan_checkpoint, tmp_path):
    path, wan = wan_checkpoint
    state = load_file(path)
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / file))
        weight_map.update({k: file for k in keys})
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for source in (index, tmp_path):
        model = FactorPortraitDiT.from_wan(source, DiTConfig.tiny())
        assert torch.equal(model.blocks[0].ffn[0].weight, wan.blocks[0].ffn[0].weight)


def test_wrong_preset_is_refused_with_readable_message(wan_checkpoint):
    path, _ = wan_checkpoint
    with pytest.raises(WeightsMismatchError) as error:
        FactorPortraitDiT.from_wan(path, DiTConfig.tiny(num_layers=3))
    assert "missing keys: blocks.2." in str(error.value)
    with pytest.raises(WeightsMismatchError) as error:
        FactorPortraitDiT.from_wan(path, DiTConfig.tiny(dim=96, num_heads=3))
    message = str(error.value)
    assert "shape mismatches" in message and "custom config (dim=96" in message
    with pytest.raises(WeightsMismatchError, match="unexpected keys: blocks.1"):
        FactorPortraitDiT.from_wan(path, DiTConfig.tiny(num_layers=1))


def test_missing_or_pickled_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FactorPortraitDiT.from_wan(tmp_path / "nope.safetensors", DiTConfig.tiny())
    pickled = tmp_path / "model.pth"
    torch.save({"a": torch.zeros(1)}, pickled)
    with pytest.raises(ValueError, match="not loaded"):
        FactorPortraitDiT.from_wan(pickled, DiTConfig.tiny())


def test_save_load_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = FactorPortraitDiT(DiTConfig.tiny(num_layers=1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.null_context.normal_()
    model.save_pretrained(tmp_path / "ckpt")
    model.save_pretrained(tmp_path / "ckpt")  # replacing an existing checkpoint
    loaded = FactorPortraitDiT.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["ckpt"]  # no staging left


def test_checkpoint_of_another_config_is_refused(tmp_path):
    FactorPortraitDiT(DiTConfig.tiny()).save_pretrained(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    config["config"]["num_layers"] = 3
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsMismatchError, match="does not match"):
        FactorPortraitDiT.from_pretrained(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="config.json"):
        FactorPortraitDiT.from_pretrained(tmp_path)
