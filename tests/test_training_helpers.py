"""Per-stack learning rates and freezing, in a plain loop, through transformers.Trainer and through BLTTrainer (also
under FSDP, where Trainer must build the optimizer itself)."""

import pytest
import torch
from datasets import Dataset
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from transformers import Trainer, TrainerCallback, TrainingArguments

from blt_hf import BLTTokenizer
from blt_hf.training.baselines import ByteLlamaForCausalLM, byte_llama_config
from blt_hf.training.data import BLTDataCollator, add_patch_lengths, pack_documents, text_dataset
from blt_hf.training.entry_points import TrainOptions, _optimizer_arguments, _training_arguments, blt_trainer
from blt_hf.training.trainer import BLTTrainer, create_optimizer, freeze, parameter_groups
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


def _byte_rows(model):
    texts = ["the cat sat on the mat. " * 12, "bytes are all you need. " * 12] * 4
    return add_patch_lengths(pack_documents(text_dataset(dataset=Dataset.from_dict({"text": texts})), 64), model)


SCALED_STACKS = {"global_transformer": "model.global_transformer.", "local_encoder": "model.local_encoder."}


def _expected_lr(name, learning_rate, scales):
    """The per-stack rate of a parameter, from its (unwrapped) name alone."""
    stack = next((stack for stack, prefix in SCALED_STACKS.items() if name.startswith(prefix)), None)
    return learning_rate * scales.get(stack, 1.0)


def test_blt_trainer_builds_per_stack_rates_from_its_arguments_and_the_schedule_keeps_their_ratio(tmp_path):
    model = tiny_model(seed=4)
    freeze(model, "hash_embeddings")
    scales = {"global_transformer": 0.1, "local_encoder": 0.5}
    seen = []

    class RecordRates(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            seen.append((state.global_step, {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}))

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=4, learning_rate=2e-3,
                             weight_decay=0.05, adam_beta2=0.95, optim="adamw_torch", warmup_steps=2,
                             lr_scheduler_type="linear", use_cpu=True, report_to=[], save_strategy="no",
                             disable_tqdm=True)
    trainer = BLTTrainer(model=model, args=args, train_dataset=_byte_rows(model), data_collator=BLTDataCollator(),
                         callbacks=[RecordRates()], global_lr_scale=0.1, stack_lr_scales={"local_encoder": 0.5})
    trainer.train()
    groups = trainer.optimizer.param_groups
    assert all(g["betas"] == (0.9, 0.95) and g["eps"] == 1e-8 for g in groups)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    frozen = ("model.patcher.", "model.encoder_hash_tok_embedding.")
    assert set(decay) == {id(p) for n, p in named.items() if not n.startswith(frozen)}
    assert all(decay[id(p)] == (0.05 if p.dim() >= 2 else 0.0) for p in named.values() if id(p) in decay)
    factor = {1: 0.5, 2: 1.0, 3: 0.5, 4: 0.0}  # linear warmup over 2 steps, then linear decay to step 4
    assert [step for step, _ in seen] == [1, 2, 3, 4]
    for step, rates in seen:
        for name, param in named.items():
            if id(param) in rates:
                assert rates[id(param)] == pytest.approx(_expected_lr(name, 2e-3, scales) * factor[step]), name


def test_under_fsdp_trainer_refuses_a_ready_optimizer_but_the_entry_points_trainers_construct(tmp_path, monkeypatch):
    """accelerate enables FSDP on accelerators only, so this sets the flag it would set; Trainer then creates the
    optimizer itself, after wrapping (FSDP1) or before (FSDP2): the per-stack rates must survive wrapper names."""
    create_accelerator = Trainer.create_accelerator_and_postprocess

    def with_fsdp(self):
        create_accelerator(self)
        self.is_fsdp_enabled = True  # what an FSDP plugin in accelerate's state sets

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", with_fsdp)
    model = tiny_model(seed=6)
    options = TrainOptions(output=str(tmp_path), learning_rate=1e-3, global_lr_scale=0.25, weight_decay=0.1)
    rows = _byte_rows(model)
    with pytest.raises(RuntimeError, match="Passing `optimizers` is not allowed if PyTorch FSDP is enabled"):
        Trainer(model=model, args=_training_arguments(options), train_dataset=rows,
                optimizers=(create_optimizer(model), None))
    trainer = blt_trainer(model, options, rows)
    assert trainer.is_fsdp_enabled and trainer.optimizer is None
    expected = {id(p): _expected_lr(n, 1e-3, {"global_transformer": 0.25})
                for n, p in model.named_parameters() if p.requires_grad}  # the entropy model is frozen
    for stack in (model.model.global_transformer, model.model.local_decoder):
        for i, layer in enumerate(stack.layers):
            stack.layers[i] = checkpoint_wrapper(layer)
    wrapped = torch.nn.DataParallel(model)  # on CPU a plain wrapper that prefixes "module."
    names = [n for n, _ in wrapped.named_parameters()]
    assert any("._checkpoint_wrapped_module." in n for n in names) and all(n.startswith("module.") for n in names)
    optimizer = trainer.create_optimizer(wrapped)
    assert {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]} == pytest.approx(expected)
    # train-byte-llama: Trainer's own optimizer, weight decay on exactly the matrices
    llama = ByteLlamaForCausalLM(byte_llama_config("tiny"))
    plain = Trainer(model=llama, args=_training_arguments(options, **_optimizer_arguments(options)),
                    train_dataset=rows)
    decay = {id(p): g["weight_decay"] for g in plain.create_optimizer().param_groups for p in g["params"]}
    assert decay == {id(p): 0.1 if p.dim() >= 2 else 0.0 for p in llama.parameters()}
    assert plain.optimizer.defaults["betas"] == (0.9, 0.95)
