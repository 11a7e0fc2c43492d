"""transformers' Blt folders <-> blt_hf folders (blt-hf convert-transformers, conversion/convert_transformers.py):
both ways, atomic output, clear errors."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BltForCausalLM as TransformersBlt
from transformers import GPT2Config, GPT2LMHeadModel

from blt_hf import BLTForCausalLM
from blt_hf.convert.transformers_blt import convert_from_transformers, convert_to_transformers
from blt_hf.tools.cli import main
from tests.utils import random_ids, separated_threshold, tiny_hf_config, tiny_hf_model, tiny_model


def test_transformers_folder_converts_to_blt_hf_and_back_with_the_same_logits(tmp_path):
    hf = tiny_hf_model(tiny_hf_config(window=16, threshold=5.0), seed=3)
    hf.save_pretrained(tmp_path / "hf")
    convert_from_transformers(tmp_path / "hf", tmp_path / "ours")
    ours = BLTForCausalLM.from_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "blt_hf"
    ids = random_ids(120, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)
    convert_to_transformers(tmp_path / "ours", tmp_path / "back")
    back = TransformersBlt.from_pretrained(tmp_path / "back")
    for name, tensor in hf.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_blt_hf_folder_round_trips_through_a_transformers_folder_exactly(tmp_path, capsys):
    ours = tiny_model(seed=6)
    ids = random_ids(200, seed=6)
    with torch.no_grad():
        ours.config.patching_threshold = separated_threshold(ours.model.patcher(ids).entropies[:, 1:])
    ours.save_pretrained(tmp_path / "ours")
    script = [sys.executable, "conversion/convert_transformers.py", str(tmp_path / "ours"), str(tmp_path / "hf")]
    done = subprocess.run([*script, "--to-transformers"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "wrote" in done.stdout, done.stderr[-2000:]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "blt"
    assert main(["convert-transformers", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert "wrote" in capsys.readouterr().out
    back = BLTForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert ours.state_dict().keys() == back.state_dict().keys()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    with torch.no_grad():
        ours_out = ours(ids, output_patch_lengths=True)
        back_out = back(ids, output_patch_lengths=True)
        assert ours_out.patch_lengths.shape[1] < ids.shape[1]  # real multi-byte patches, not one per byte
        assert torch.equal(back_out.patch_lengths, ours_out.patch_lengths)
        assert torch.equal(back_out.logits, ours_out.logits)
        # the intermediate folder is a working transformers Blt computing the same thing
        hf = TransformersBlt.from_pretrained(tmp_path / "hf").eval()
        torch.testing.assert_close(hf(ids).logits, ours_out.logits, atol=1e-4, rtol=0)


def _save_source(folder, direction):
    """A tiny source folder for `direction` ("from" = a transformers Blt folder, "to" = a blt_hf folder)."""
    if direction == "from":
        tiny_hf_model(tiny_hf_config(), seed=1).save_pretrained(folder)
    else:
        tiny_model(seed=1).save_pretrained(folder)
    return convert_from_transformers if direction == "from" else convert_to_transformers


def _assert_nothing_left(tmp_path, expected_names):
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected_names)


@pytest.mark.parametrize("problem, listed", [
    ("extra", r"unexpected \['model\.local_encoder\.extra_gate\.weight'\]"),
    ("missing", r"missing \['model\.local_decoder\.norm\.weight'\]"),
], ids=["extra", "missing"])
@pytest.mark.parametrize("direction", ["from", "to"])
def test_extra_or_missing_tensors_are_listed_and_leave_nothing_behind(tmp_path, direction, problem, listed):
    converter = _save_source(tmp_path / "src", direction)
    state = load_file(tmp_path / "src" / "model.safetensors")
    if problem == "extra":
        state["model.local_encoder.extra_gate.weight"] = torch.ones(3)
    else:
        del state["model.local_decoder.norm.weight"]
    save_file(state, tmp_path / "src" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=listed):
        converter(tmp_path / "src", tmp_path / "out")
    _assert_nothing_left(tmp_path, ["src"])


@pytest.mark.parametrize("direction", ["from", "to"])
def test_failure_while_writing_leaves_nothing_and_never_clobbers_the_destination(tmp_path, monkeypatch, direction):
    converter = _save_source(tmp_path / "src", direction)
    written_into = []

    def save_partially_then_fail(self, folder, *args, **kwargs):
        written_into.append(folder)
        (folder / "model.safetensors").write_bytes(b"half a file")
        raise OSError("disk full")

    writer = BLTForCausalLM if direction == "from" else TransformersBlt
    with monkeypatch.context() as patch:
        patch.setattr(writer, "save_pretrained", save_partially_then_fail)
        with pytest.raises(OSError, match="disk full"):
            converter(tmp_path / "src", tmp_path / "out")
        assert len(written_into) == 1 and written_into[0].parent == tmp_path  # a scratch folder beside the output
        _assert_nothing_left(tmp_path, ["src"])
        (tmp_path / "out").mkdir()  # an existing empty destination is kept as it was
        with pytest.raises(OSError, match="disk full"):
            converter(tmp_path / "src", tmp_path / "out")
        assert not any((tmp_path / "out").iterdir())
        _assert_nothing_left(tmp_path, ["src", "out"])

    (tmp_path / "out" / "previous.txt").write_text("an earlier conversion")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        converter(tmp_path / "src", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["previous.txt"]
    assert (tmp_path / "out" / "previous.txt").read_text() == "an earlier conversion"
    _assert_nothing_left(tmp_path, ["src", "out"])


def test_wrong_checkpoint_type_fails_and_leaves_nothing_behind(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="'gpt2' checkpoint; expected model_type 'blt'"):
        convert_from_transformers(tmp_path / "gpt2", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["gpt2"]


def test_missing_weights_fail_clearly(tmp_path):
    tiny_hf_model(tiny_hf_config(), seed=0).config.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="no .safetensors weights"):
        convert_from_transformers(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
