"""BLTForCausalLM behaviour: padding invariance, loss, training, save/load, Auto classes, remote code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from blt_hf import BLTConfig, BLTForCausalLM, BLTModel
from tests.utils import (
    PATCHING_VARIANTS,
    calibrate_patching,
    random_ids,
    text_ids,
    tiny_config,
    tiny_model,
)

ROW_LENGTHS = [50, 23, 77]


def _rows(seed=0):
    return [random_ids(n, seed=seed + i)[0] for i, n in enumerate(ROW_LENGTHS)]


def _pad(rows, side, pad_id=0):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    return ids, mask


@pytest.mark.parametrize("variant", list(PATCHING_VARIANTS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_give_the_logits_of_each_row_alone(side, variant):
    model = tiny_model(seed=1, has_patcher=True, **PATCHING_VARIANTS[variant])
    rows = _rows()
    calibrate_patching(model, variant, rows)
    ids, mask = _pad(rows, side, pad_id=7 if side == "left" else 0)  # any pad id: padding must never be read
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        for i, row in enumerate(rows):
            alone = model(row[None]).logits[0]
            got = batched[i][mask[i].bool()]
            torch.testing.assert_close(got, alone, atol=1e-4, rtol=0)


def test_loss_is_the_shifted_mean_cross_entropy_and_honours_num_items_in_batch():
    model = tiny_model(seed=2)
    ids = random_ids(40, seed=2, batch=2)
    labels = ids.clone()
    labels[0, :10] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 260)
    targets = labels[:, 1:].reshape(-1)
    manual = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    torch.testing.assert_close(out.loss, manual)
    summed = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    with_count = model(ids, labels=labels, num_items_in_batch=torch.tensor(100))
    torch.testing.assert_close(with_count.loss, summed / 100)


def test_a_few_training_steps_lower_the_loss_and_leave_the_patcher_frozen():
    model = tiny_model(seed=3).train()
    patcher_before = {k: v.clone() for k, v in model.model.patcher.state_dict().items()}
    ids = random_ids(64, seed=3, batch=2)
    ids[:, 1:] = (torch.arange(63) % 7 + 70)[None]  # a learnable periodic text
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    for name, value in model.model.patcher.state_dict().items():
        assert torch.equal(value, patcher_before[name]), name
    assert all(p.grad is None for p in model.model.patcher.parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model(seed=4).train()
    ids = random_ids(48, seed=4, batch=2)
    model(ids, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(ids, labels=ids).loss.backward()
    for name, grad in plain.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5)


def test_logits_to_keep_returns_the_last_positions():
    model = tiny_model(seed=5)
    ids = random_ids(30, seed=5)
    full = model(ids).logits
    torch.testing.assert_close(model(ids, logits_to_keep=1).logits, full[:, -1:])


def test_save_and_from_pretrained_round_trip_exactly(tmp_path):
    model = tiny_model(seed=6)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "configuration_blt_hf.py", "modeling_blt_hf.py"} <= files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "blt_hf"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_blt_hf.BLTForCausalLM"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, BLTForCausalLM)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ids = random_ids(60, seed=6)
    assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_auto_classes_resolve_to_blt_hf_and_not_transformers_blt():
    assert AutoConfig.for_model("blt_hf").__class__ is BLTConfig
    config = tiny_config()
    assert type(AutoModelForCausalLM.from_config(config)) is BLTForCausalLM
    assert type(AutoModel.from_config(config)) is BLTModel
    assert BLTConfig.model_type != "blt"
    assert AutoConfig.for_model("blt").__class__.__module__.startswith("transformers.models.blt")


def test_saved_folder_loads_with_remote_code_where_blt_hf_is_not_importable(tmp_path):
    model = tiny_model(seed=7, patching_mode="entropy")
    model.save_pretrained(tmp_path / "ckpt")
    ids = random_ids(80, seed=7)
    torch.save(ids, tmp_path / "ids.pt")
    expected = model(ids).logits
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["blt_hf"] = None  # blt_hf is not installed in this process
        try:
            import blt_hf
        except ImportError:
            pass
        else:
            raise SystemExit("blt_hf is importable")
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        ids = torch.load({str(tmp_path / 'ids.pt')!r}, weights_only=True)
        torch.save(model(ids).logits, {str(tmp_path / 'out.pt')!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), expected)



def test_return_dict_false_gives_tuples_as_transformers_models_do():
    """`return_dict=False` (or `config.return_dict = False`) returns the output's tuple; generation still works."""
    model = tiny_model().eval()
    ids = text_ids("tuples, as transformers models return them")
    with torch.no_grad():
        full = model(ids, labels=ids)
        loss, logits = model(ids, labels=ids, return_dict=False)[:2]
        model.config.return_dict = False
        try:
            as_config = model(ids)
            generated = model.generate(ids, max_new_tokens=6, do_sample=False)
        finally:
            model.config.return_dict = True
        expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(loss, full.loss) and torch.equal(logits, full.logits)
    assert isinstance(as_config, tuple) and torch.equal(as_config[0], full.logits)
    assert torch.equal(generated, expected)
    with torch.no_grad():
        base = model.model(ids)
        base_tuple = model.model(ids, return_dict=False)
    assert isinstance(base_tuple, tuple) and torch.equal(base_tuple[0], base.last_hidden_state)
