"""Training helpers: per-stack learning rates and freezing, for plain PyTorch loops and `transformers.Trainer`.

Byte-ifying a pretrained model (the paper's Llama 3.1 initialisation) trains the new local stacks at the full
learning rate and the inherited global transformer at a lower one (the paper used 10x lower):

    from blt_hf.training import create_optimizer, freeze
    freeze(model, "patcher")                                       # the entropy model is trained separately
    optimizer = create_optimizer(model, learning_rate=3e-4, global_lr_scale=0.1)
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None))

Trainer builds its learning-rate schedule on top and scales every group alike, so the ratio is kept.
"""

from __future__ import annotations

import torch

# parameter-name prefixes of each stack inside BLTForCausalLM
STACKS = {
    "patcher": "model.patcher.",
    "local_encoder": "model.local_encoder.",
    "hash_embeddings": "model.encoder_hash_tok_embedding.",
    "global_transformer": "model.global_transformer.",
    "local_decoder": "model.local_decoder.",
    "lm_head": "lm_head.",
}


def _stack_of(name: str) -> str:
    for stack, prefix in STACKS.items():
        if name.startswith(prefix):
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
