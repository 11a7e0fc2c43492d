"""Per-stack learning rates and freezing, in a plain loop and through transformers.Trainer."""

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from blt_hf import BLTTokenizer
from blt_hf.training import create_optimizer, freeze, parameter_groups
from tests.utils import random_ids, tiny_model


def test_groups_give_the_global_transformer_a_scaled_rate_and_skip_frozen_stacks():
    model = tiny_model(seed=0)
    freeze(model, "patcher", "hash_embeddings")
    groups = {g["name"]: g for g in parameter_groups(model, 1e-3, global_lr_scale=0.1, weight_decay=0.05)}
    assert groups["global_transformer"]["lr"] == pytest.approx(1e-4)
    assert groups["local_decoder"]["lr"] == pytest.approx(1e-3)
    assert groups["global_transformer.no_decay"]["weight_decay"] == 0.0
    assert groups["local_encoder"]["weight_decay"] == 0.05
    assert "patcher" not in groups and "hash_embeddings" not in groups
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert grouped == trainable
    with pytest.raises(ValueError, match="unknown stacks"):
        freeze(model, "encoder")


def test_first_adam_step_moves_global_weights_ten_times_less():
    model = tiny_model(seed=1).train()
    optimizer = create_optimizer(model, learning_rate=1e-3, global_lr_scale=0.1, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = random_ids(48, seed=1, batch=2)
    model(ids, labels=ids).loss.backward()
    optimizer.step()

    def mean_step(prefix):
        steps = [(p - before[n]).abs().mean() for n, p in model.named_parameters()
                 if n.startswith(prefix) and p.dim() >= 2]
        return torch.stack(steps).mean()

    ratio = mean_step("model.global_transformer.") / mean_step("model.local_decoder.")
    assert 0.07 < ratio < 0.13  # Adam's first step is about lr per weight


def test_trainer_accepts_the_optimizer_and_keeps_frozen_stacks_fixed(tmp_path):
    model = tiny_model(seed=2)
    freeze(model, "global_transformer")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("model.global_transformer.")}
    tokenizer = BLTTokenizer()
    texts = ["the cat sat on the mat. " * 3, "bytes are all you need. " * 3] * 8
    dataset = Dataset.from_dict({"text": texts}).map(
        lambda row: {**tokenizer(row["text"]), "labels": tokenizer(row["text"])["input_ids"]}, remove_columns=["text"]
    )
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, report_to=[],
                             learning_rate=3e-3, logging_steps=1, use_cpu=True, save_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      optimizers=(create_optimizer(model, learning_rate=3e-3), None))
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 4 and losses[-1] < losses[0]
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
