"""conversion/convert_transformers.py: folders both ways, atomic output, clear errors."""

import json

import pytest
import torch
from transformers import BltForCausalLM as TransformersBlt
from transformers import GPT2Config, GPT2LMHeadModel

from blt_hf import BLTForCausalLM
from conversion.convert_transformers import convert
from tests.utils import random_ids, tiny_hf_config, tiny_hf_model


def test_transformers_folder_converts_to_blt_hf_and_back_with_the_same_logits(tmp_path):
    hf = tiny_hf_model(tiny_hf_config(window=16, threshold=5.0), seed=3)
    hf.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ours")
    ours = BLTForCausalLM.from_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "blt_hf"
    ids = random_ids(120, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)
    convert(tmp_path / "ours", tmp_path / "back", to_transformers=True)
    back = TransformersBlt.from_pretrained(tmp_path / "back")
    for name, tensor in hf.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_wrong_checkpoint_type_fails_and_leaves_nothing_behind(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="'gpt2' checkpoint; expected model_type 'blt'"):
        convert(tmp_path / "gpt2", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["gpt2"]


def test_missing_weights_fail_clearly(tmp_path):
    tiny_hf_model(tiny_hf_config(), seed=0).config.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="no .safetensors weights"):
        convert(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
