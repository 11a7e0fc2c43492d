"""Training with transformers.Trainer and accelerate: loss falls, resume is exact, bf16, activation checkpointing,
LoRA, DDP == single process, FSDP2 sharding, the Block Transformer decoder in training, and the blt-hf train /
train-entropy entry points (text files or a datasets dataset)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from transformers import Trainer, TrainingArguments

from blt_hf import BLTForCausalLM, BLTPatcher
from blt_hf.training.data import BLTDataCollator, add_patch_lengths, pack_documents
from blt_hf.training.entry_points import TrainOptions, load_split, parse_options
from blt_hf.training.trainer import BLTTrainer, create_optimizer
from tests.test_generation import build_model
from tests.utils import random_ids, tiny_model

TEXT = "".join(Path(f"/usr/share/common-licenses/{name}").read_text() for name in ("GPL-3", "Apache-2.0", "GFDL-1.3"))
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": "src:.", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text(TEXT[:50_000])
    (folder / "eval.txt").write_text(TEXT[50_000:60_000])
    return folder


def _rows(model, row_length=128):
    from datasets import Dataset

    return add_patch_lengths(pack_documents(Dataset.from_dict({"text": [TEXT[:8000], TEXT[8000:12000]]}),
                                            row_length), model)


def _args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=6, learning_rate=3e-3,
                  logging_steps=1, use_cpu=True, report_to=[], save_strategy="no", seed=0, data_seed=0,
                  lr_scheduler_type="constant", disable_tqdm=True)
    values.update(overrides)
    return TrainingArguments(**values)


def _losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_learns_from_packed_rows_with_precomputed_patches_without_running_the_patcher(tmp_path):
    model = build_model("entropy", 0).train()
    rows = _rows(model)
    calls = []
    original = model.model.patcher.next_byte_logits
    model.model.patcher.next_byte_logits = lambda *a, **k: calls.append(1) or original(*a, **k)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=12), train_dataset=rows,
                      data_collator=BLTDataCollator())
    trainer.train()
    losses = _losses(trainer)
    assert losses[-1] < losses[0] - 0.5 and calls == []


def test_resuming_from_a_checkpoint_reproduces_the_same_weights(tmp_path):
    def run(output, steps, resume=None):
        model = tiny_model(seed=1)
        trainer = Trainer(model=model, args=_args(output, max_steps=steps, save_strategy="steps", save_steps=3),
                          train_dataset=_rows(model), data_collator=BLTDataCollator(),
                          optimizers=(create_optimizer(model, learning_rate=3e-3), None))
        trainer.train(resume_from_checkpoint=resume)
        return model

    straight = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    resumed = run(tmp_path / "b", 6, resume=str(tmp_path / "b" / "checkpoint-3"))
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_gradient_accumulation_gives_the_update_of_one_big_batch_with_uneven_rows(tmp_path):
    """Rows with different numbers of target bytes (the last is mostly padding): Trainer's num_items_in_batch makes
    2 x 2 accumulated micro-batches sum to the same loss scale as one batch of 4."""
    from datasets import Dataset

    def run(output, batch, accumulation):
        model = tiny_model(seed=5)
        rows = _rows(model)
        rows = Dataset.from_list([rows[i] for i in (0, len(rows) - 1, 1, 2)])  # the padded row in micro-batch 1
        trainer = Trainer(model=model, args=_args(output, max_steps=1, per_device_train_batch_size=batch,
                                                  gradient_accumulation_steps=accumulation,
                                                  train_sampling_strategy="sequential", max_grad_norm=1e9),
                          train_dataset=rows, data_collator=BLTDataCollator(),
                          optimizers=(torch.optim.SGD(model.parameters(), lr=1.0), None))
        trainer.train()
        return model

    one, accumulated = run(tmp_path / "a", 4, 1), run(tmp_path / "b", 2, 2)
    for (name, a), (_, b) in zip(one.state_dict().items(), accumulated.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, msg=name)


def test_bf16_and_activation_checkpointing_train(tmp_path):
    model = tiny_model(seed=2)
    trainer = Trainer(model=model, args=_args(tmp_path, bf16=True, activation_checkpointing=True, max_steps=8),
                      train_dataset=_rows(model), data_collator=BLTDataCollator())
    trainer.train()
    losses = _losses(trainer)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(layer.gradient_checkpointing for layer in model.model.local_decoder.layers)


def test_lora_on_the_global_attention_trains_only_the_adapters(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = tiny_model(seed=3)
    rows = _rows(model)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    targets = r".*global_transformer\.layers\.\d+\.self_attn\.(q|k|v|o)_proj"
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets)
    peft_model = get_peft_model(model, config)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "global_transformer" in n for n in trainable)
    trainer = Trainer(model=peft_model, args=_args(tmp_path, max_steps=10, learning_rate=1e-2), train_dataset=rows,
                      data_collator=BLTDataCollator())
    trainer.train()
    losses = _losses(trainer)
    assert losses[-1] < losses[0]
    for name, param in peft_model.base_model.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[name.replace(".base_layer", "")]), name


def _train_command(output, extra):
    return [
        "-m", "blt_hf.tools.cli", "train", "--preset", "tiny", "--steps", "4", "--row-length", "128",
        "--eval-steps", "0",
        "--save-steps", "100", "--logging-steps", "1", "--warmup-steps", "0", "--learning-rate", "3e-3",
        "--scheduler", "constant", "--sampling", "sequential", "--patching-mode", "space", "--output", str(output),
        *extra,
    ]


def test_ddp_on_two_processes_matches_one_process_for_the_same_global_batch(corpus, tmp_path):
    train = ["--train", str(corpus / "train.txt")]
    single = subprocess.run([sys.executable, *_train_command(tmp_path / "one", [*train, "--batch-size", "4"])],
                            env=ENV, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch",
                  "--config_file", "configs/accelerate_ddp_cpu.yaml"]
    ddp = subprocess.run([*accelerate, *_train_command(tmp_path / "two", [*train, "--batch-size", "2"])],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    torch.testing.assert_close(torch.tensor(two["train_losses"]), torch.tensor(one["train_losses"]), atol=1e-4, rtol=0)
    a = BLTForCausalLM.from_pretrained(tmp_path / "one" / "final").state_dict()
    b = BLTForCausalLM.from_pretrained(tmp_path / "two" / "final").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


def test_fsdp2_shards_the_model_over_two_cpu_processes(tmp_path):
    out = tmp_path / "fsdp.json"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "tests/scripts/fsdp2_cpu_smoke.py", str(out)], env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    model = tiny_model(seed=0, patching_mode="space", has_patcher=False).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = random_ids(48, seed=1, batch=4)
    expected = []
    for _ in range(3):
        halves = [model(part, labels=part, use_cache=False).loss for part in ids.split(2)]
        loss = sum(halves) / 2
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        expected.append(loss.item())
    assert result["sharded_parameters"] > 20
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(expected), atol=1e-4, rtol=0)


def test_train_entropy_then_train_a_blt_with_it_end_to_end(corpus, tmp_path):
    common = ["--train", str(corpus / "train.txt"), "--eval", str(corpus / "eval.txt"), "--preset", "tiny",
              "--row-length", "128", "--batch-size", "4", "--eval-steps", "5", "--save-steps", "5",
              "--logging-steps", "5", "--warmup-steps", "2", "--learning-rate", "3e-3"]
    entropy = subprocess.run([sys.executable, "-m", "blt_hf.tools.cli", "train-entropy", *common, "--steps", "10",
                              "--output", str(tmp_path / "entropy")], env=ENV, capture_output=True, text=True,
                             timeout=600)
    assert entropy.returncode == 0, entropy.stderr[-3000:]
    entropy_metrics = json.loads((tmp_path / "entropy" / "metrics.json").read_text())
    assert entropy_metrics["eval_bits_per_byte"] < 8
    assert isinstance(BLTPatcher.from_pretrained(tmp_path / "entropy" / "final"), BLTPatcher)
    cache = ["--data-cache", str(tmp_path / "rows")]
    blt = subprocess.run([sys.executable, "-m", "blt_hf.tools.cli", "train", *common, *cache, "--steps", "10",
                          "--patcher", str(tmp_path / "entropy" / "final"), "--output", str(tmp_path / "blt")],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert blt.returncode == 0, blt.stderr[-3000:]
    assert "held-out" in blt.stdout
    metrics = json.loads((tmp_path / "blt" / "metrics.json").read_text())
    assert metrics["eval_bits_per_byte"] < 8 and (tmp_path / "blt" / "checkpoint-10").is_dir()
    model = BLTForCausalLM.from_pretrained(tmp_path / "blt" / "final")
    patcher = BLTPatcher.from_pretrained(tmp_path / "entropy" / "final")
    for name, tensor in patcher.state_dict().items():
        assert torch.equal(model.model.patcher.state_dict()[name], tensor), name
    cached = sorted(p.name for p in (tmp_path / "rows").iterdir())
    assert len(cached) == 2 and all(name.startswith("rows-") for name in cached)  # train and held-out rows, patched
    # resuming continues from the last checkpoint, reuses the patched rows and keeps the held-out history
    resumed = subprocess.run([sys.executable, "-m", "blt_hf.tools.cli", "train", *common, *cache, "--steps", "12",
                              "--resume",
                              "--patcher", str(tmp_path / "entropy" / "final"), "--output", str(tmp_path / "blt")],
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((tmp_path / "blt" / "metrics.json").read_text())
    assert metrics["steps"] == 12 and [h["step"] for h in metrics["history"]] == [5, 10]
    assert "computing patches" not in resumed.stderr
    assert sorted(p.name for p in (tmp_path / "rows").iterdir()) == cached


def _row_bytes(rows):
    """The document bytes of packed rows, in order (BOS and padding dropped)."""
    return bytes(i - 4 for row in rows for i, keep in zip(row["input_ids"], row["attention_mask"], strict=True)
                 if keep and i >= 4)


def test_train_from_a_saved_dataset_reads_its_text_column_and_flags_win_over_the_options_file(tmp_path):
    body = [TEXT[i : i + 2500] for i in range(0, 20_000, 2500)]
    held_out = [TEXT[30_000:32_000]]
    decoy = "DECOY " * 400  # the "text" column: read only if --text-column were ignored
    DatasetDict({
        "train": Dataset.from_dict({"body": body, "text": [decoy] * len(body)}),
        "test": Dataset.from_dict({"body": held_out, "text": [decoy]}),
    }).save_to_disk(tmp_path / "data")
    (tmp_path / "run.json").write_text(json.dumps({"dataset": str(tmp_path / "data"), "text_column": "text",
                                                   "eval_dataset_split": "test", "batch_size": 2}))
    extra = ["--options", str(tmp_path / "run.json"), "--text-column", "body", "--steps", "3",
             "--data-cache", str(tmp_path / "rows")]
    done = subprocess.run([sys.executable, *_train_command(tmp_path / "run", extra)], env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["eval_bytes"] == len("".join(held_out).encode())
    cached = {_row_bytes(load_from_disk(folder)) for folder in (tmp_path / "rows").iterdir()}
    assert cached == {"".join(body).encode(), "".join(held_out).encode()}


def test_train_options_need_one_source_of_training_text(tmp_path):
    with pytest.raises(ValueError, match="--train or a dataset with --dataset"):
        parse_options([], "train")
    with pytest.raises(ValueError, match="not both"):
        parse_options(["--train", "a.txt", "--dataset", str(tmp_path)], "train")
    with pytest.raises(ValueError, match="needs --dataset"):
        parse_options(["--train", "a.txt", "--eval-dataset-split", "test"], "train")
    (tmp_path / "run.json").write_text(json.dumps({"dataset": "corpus", "dataset_config": "en", "steps": 7}))
    options = parse_options(["--options", str(tmp_path / "run.json"), "--dataset-split", "validation"], "train")
    assert (options.dataset, options.dataset_config, options.steps) == ("corpus", "en", 7)
    assert (options.dataset_split, options.text_column, options.train) == ("validation", "text", [])


def test_load_split_reads_a_saved_dataset_or_a_folder_load_dataset_understands(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    Dataset.from_dict({"text": ["only"]}).save_to_disk(tmp_path / "single")
    single = TrainOptions(dataset=str(tmp_path / "single"), eval_dataset_split="test")
    assert load_split(single, "train")["text"] == ["only"]
    with pytest.raises(ValueError, match="no split 'test'"):
        load_split(single, "test")
    (tmp_path / "json").mkdir()
    for split, texts in {"train": ["a", "b"], "test": ["c"]}.items():
        (tmp_path / "json" / f"{split}.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    folder = TrainOptions(dataset=str(tmp_path / "json"))
    assert load_split(folder, "train")["body"] == ["a", "b"] and load_split(folder, "test")["body"] == ["c"]


def _decoder_input_gradient(model, ids, patch_lengths, target):
    """Logits, and |d loss(byte `target`) / d local-decoder input| per byte. The decoder's input states are made a
    leaf, so the gradient reaches them only inside the decoder (not through the patches and the global model)."""
    leaves = []

    def as_leaf(module, args):
        leaves.append(args[0].detach().requires_grad_())
        return (leaves[-1], *args[1:])

    handle = model.model.local_decoder.register_forward_pre_hook(as_leaf)
    try:
        logits = model(ids, patch_lengths=patch_lengths, use_cache=False).logits
    finally:
        handle.remove()
    torch.nn.functional.cross_entropy(logits[0, target], ids[0, target + 1]).backward()
    return logits, leaves[0].grad[0].abs().sum(-1)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("length", [20, 100], ids=["dense", "blocked"])  # the decoder window is 24 bytes
def test_block_transformer_decoder_trains_with_attention_only_within_each_patch(length, checkpointing):
    """In train mode (gradients on, optionally activation checkpointing) the logits are eval mode's, and a byte's
    loss has no gradient into the decoder input of any byte of an earlier decoder patch: byte i predicts byte i+1
    from the patch before i+1's, so its decoder patch is the patch of byte i+1."""
    model = tiny_model(seed=8, patching_mode="static", has_patcher=False,
                       decoder_config=dict(patch_local_attention=True))
    ids = random_ids(length, seed=8)
    layout = [1] + [3, 5, 2, 7, 4, 6] * 20  # BOS alone, then uneven patches
    patch_of = torch.repeat_interleave(torch.arange(len(layout)), torch.tensor(layout))[:length]
    patch_lengths = torch.bincount(patch_of)[None]
    with torch.no_grad():
        expected = model(ids, patch_lengths=patch_lengths, use_cache=False).logits
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable()
        assert all(layer.gradient_checkpointing for layer in model.model.local_decoder.layers)
    for target in (length // 2, length - 2):
        for local_attention in (True, False):
            model.config.decoder_config.patch_local_attention = local_attention
            model.zero_grad()
            logits, gradient = _decoder_input_gradient(model, ids, patch_lengths, target)
            same_patch = patch_of[1 : target + 2] == patch_of[target + 1]
            earlier = gradient[: target + 1][~same_patch]
            assert (gradient[: target + 1][same_patch] > 0).all() and (gradient[target + 1 :] == 0).all()
            if local_attention:
                torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
                assert earlier.numel() > 0 and (earlier == 0).all()
            else:  # the shared window leaks: the test can tell
                assert (earlier[-3:] > 0).all()


def test_trainer_steps_with_the_block_transformer_decoder_lower_the_loss(tmp_path):
    model = tiny_model(seed=9, patching_mode="space", has_patcher=False,
                       decoder_config=dict(patch_local_attention=True))
    trainer = BLTTrainer(model=model, args=_args(tmp_path, max_steps=8, activation_checkpointing=True),
                         train_dataset=_rows(model), data_collator=BLTDataCollator(), global_lr_scale=1.0)
    trainer.train()
    losses = _losses(trainer)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 1.0
