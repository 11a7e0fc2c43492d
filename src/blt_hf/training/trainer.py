"""Training helpers: per-stack learning rates and freezing, for `transformers.Trainer` and plain PyTorch loops.

Byte-ifying a pretrained model (the paper's Llama 3.1 initialisation) trains the new local stacks at the full
learning rate and the inherited global transformer at a lower one (the paper used 10x lower). With Trainer, let
`BLTTrainer` build the per-stack optimizer itself, from `args` (learning rate, weight decay, `optim` and its
betas): that also works under FSDP, where Trainer refuses a ready-made `optimizers=(...)`:

    from blt_hf.training.trainer import BLTTrainer, freeze
    freeze(model, "patcher")                                       # the entropy model is trained separately
    args = TrainingArguments("runs/x", learning_rate=3e-4, weight_decay=0.1, adam_beta2=0.95, optim="adamw_torch")
    trainer = BLTTrainer(model=model, args=args, train_dataset=data, global_lr_scale=0.1)

In a plain loop (or a Trainer without FSDP), `create_optimizer` gives the same groups as a ready AdamW:

    optimizer = create_optimizer(model, learning_rate=3e-4, global_lr_scale=0.1)

Trainer builds its learning-rate schedule on top and scales every group alike, so the ratio is kept.
"""

from __future__ import annotations

import re

import torch

from ..tools.extras import require

require("accelerate")  # transformers.Trainer needs it: name the extra that installs it
from transformers import Trainer  # noqa: E402

# parameter-name prefixes of each stack inside BLTForCausalLM
STACKS = {
    "patcher": "model.patcher.",
    "local_encoder": "model.local_encoder.",
    "hash_embeddings": "model.encoder_hash_tok_embedding.",
    "global_transformer": "model.global_transformer.",
    "local_decoder": "model.local_decoder.",
    "lm_head": "lm_head.",
}


# what wrappers put into parameter names: FSDP1, activation checkpointing and torch.compile anywhere; DDP
# (and DataParallel) and PEFT in front
_INNER_WRAPPERS = re.compile(r"(?:_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")
_OUTER_WRAPPERS = re.compile(r"^(?:module\.|base_model\.model\.)+")


def unwrapped_name(name: str) -> str:
    """A parameter name as `BLTForCausalLM` itself names it, whatever wraps the model."""
    return _OUTER_WRAPPERS.sub("", _INNER_WRAPPERS.sub("", name))


def _stack_of(name: str) -> str:
    bare = unwrapped_name(name)
    for stack, prefix in STACKS.items():
        if bare.startswith(prefix):
            return stack
    raise ValueError(f"parameter {name!r} belongs to no known BLT stack")


def freeze(model, *stacks: str, trainable: bool = False) -> None:
    """Stop (or, with trainable=True, restart) training the named stacks (keys of `STACKS`)."""
    unknown = set(stacks) - set(STACKS)
    if unknown:
        raise ValueError(f"unknown stacks {sorted(unknown)}; choose from {sorted(STACKS)}")
    for name, param in model.named_parameters():
        if _stack_of(name) in stacks:
            param.requires_grad_(trainable)


def parameter_groups(
    model,
    learning_rate: float,
    global_lr_scale: float = 0.1,
    weight_decay: float = 0.1,
    stack_lr_scales: dict[str, float] | None = None,
) -> list[dict]:
    """Optimizer groups: the global transformer at `learning_rate * global_lr_scale`, every other trainable stack at
    `learning_rate` (or its own scale from `stack_lr_scales`); vectors (norm weights) get no weight decay."""
    scales = dict.fromkeys(STACKS, 1.0)
    scales["global_transformer"] = global_lr_scale
    scales.update(stack_lr_scales or {})
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        stack = _stack_of(name)
        decay = param.dim() >= 2
        group = groups.setdefault(
            (stack, decay),
            {"params": [], "lr": learning_rate * scales[stack], "weight_decay": weight_decay if decay else 0.0,
             "name": f"{stack}{'' if decay else '.no_decay'}"},
        )
        group["params"].append(param)
    return list(groups.values())


def create_optimizer(
    model,
    learning_rate: float = 3e-4,
    global_lr_scale: float = 0.1,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    stack_lr_scales: dict[str, float] | None = None,
) -> torch.optim.AdamW:
    """AdamW over `parameter_groups` (the official BLT optimizer settings by default)."""
    groups = parameter_groups(model, learning_rate, global_lr_scale, weight_decay, stack_lr_scales)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)


class BLTTrainer(Trainer):
    """`transformers.Trainer` whose optimizer has the groups of `parameter_groups`: `args.learning_rate` and
    `args.weight_decay`, the global transformer at `global_lr_scale` (other stacks at `stack_lr_scales`), and the
    optimizer class and settings of `args.optim` (e.g. adamw_torch with adam_beta1/adam_beta2/adam_epsilon).

    Trainer creates it before or after wrapping the model (FSDP, DDP, activation checkpointing); the wrappers'
    name prefixes are stripped before matching stacks.
    """

    def __init__(self, *args, global_lr_scale: float = 0.1, stack_lr_scales: dict[str, float] | None = None,
                 **kwargs):
        self.global_lr_scale, self.stack_lr_scales = global_lr_scale, stack_lr_scales
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        takes_groups = isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)
        if not takes_groups or {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
            raise ValueError(f"optim={self.args.optim!r} builds its own parameter groups; BLTTrainer needs an "
                             "optimizer that takes them (e.g. adamw_torch)")
        groups = parameter_groups(model, self.args.learning_rate, self.global_lr_scale, self.args.weight_decay,
                                  self.stack_lr_scales)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer
