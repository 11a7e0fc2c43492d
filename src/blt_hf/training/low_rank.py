"""Low-rank updates (LoRA) of frozen linear layers: how byte-ification's stage 2 changes the source Llama's layers
and ships that change small.

`add_low_rank(model, prefix, rank)` gives every `nn.Linear` under `prefix` two factors, `low_rank_down` [r, in]
and `low_rank_up` [out, r] (up starts at zero, so the model is unchanged until trained), and a forward hook that
adds `x @ down.T @ up.T * scale` to the layer's output. The base weight stays frozen and untouched.
`low_rank_factors(model)` returns the trained factors with the scale folded into `up`, keyed by layer name, and
`merge_low_rank(model, factors)` adds `up @ down` to each named layer's weight: the model the hooks computed.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def add_low_rank(model: nn.Module, prefix: str, rank: int, alpha: float | None = None, seed: int = 0) -> list[str]:
    """Attach rank-`rank` factors and their hook to each `nn.Linear` whose name starts with `prefix`; returns the
    factors' parameter names (to train). `alpha` (default 2 * rank) sets scale = alpha / rank."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    scale = (alpha if alpha is not None else 2.0 * rank) / rank
    generator = torch.Generator().manual_seed(seed)
    names = []
    for name, layer in model.named_modules():
        if not (name.startswith(prefix) and isinstance(layer, nn.Linear)):
            continue
        if hasattr(layer, "low_rank_down"):
            raise ValueError(f"{name} already has low-rank factors")
        weight = layer.weight
        down = torch.empty(rank, layer.in_features).uniform_(-1, 1, generator=generator) / math.sqrt(layer.in_features)
        layer.low_rank_down = nn.Parameter(down.to(weight.device, weight.dtype))
        layer.low_rank_up = nn.Parameter(torch.zeros(layer.out_features, rank, device=weight.device,
                                                     dtype=weight.dtype))
        layer.low_rank_scale = scale
        layer.low_rank_hook = layer.register_forward_hook(_add_low_rank_output)
        names += [f"{name}.low_rank_down", f"{name}.low_rank_up"]
    if not names:
        raise ValueError(f"no nn.Linear under {prefix!r}")
    return names


def _add_low_rank_output(layer: nn.Linear, inputs, output):
    return output + (inputs[0] @ layer.low_rank_down.T) @ (layer.low_rank_up.T * layer.low_rank_scale)


def low_rank_factors(model: nn.Module) -> dict[str, torch.Tensor]:
    """{"<layer>.down": [r, in], "<layer>.up": [out, r] (scale folded in)} of every layer with factors."""
    factors = {}
    for name, layer in model.named_modules():
        if hasattr(layer, "low_rank_down"):
            factors[f"{name}.down"] = layer.low_rank_down.detach().clone()
            factors[f"{name}.up"] = (layer.low_rank_up.detach() * layer.low_rank_scale).clone()
    return factors


def remove_low_rank(model: nn.Module) -> None:
    """Drop the factors and hooks (the base weights, never changed, stay)."""
    for layer in model.modules():
        if hasattr(layer, "low_rank_down"):
            layer.low_rank_hook.remove()
            for attribute in ("low_rank_down", "low_rank_up", "low_rank_scale", "low_rank_hook"):
                delattr(layer, attribute)


@torch.no_grad()
def merge_low_rank(model: nn.Module, factors: dict[str, torch.Tensor]) -> None:
    """Add up @ down to the weight of each layer `factors` names (as `low_rank_factors` wrote them)."""
    layers = dict(model.named_modules())
    names = {key.rsplit(".", 1)[0] for key in factors}
    for name in sorted(names):
        layer = layers.get(name)
        if not isinstance(layer, nn.Linear) or f"{name}.down" not in factors or f"{name}.up" not in factors:
            raise ValueError(f"low-rank factors for {name!r}, which is not a linear layer of this model "
                             "(or one of its two factors is missing)")
        down, up = factors[f"{name}.down"].float(), factors[f"{name}.up"].float()
        if down.shape[1] != layer.in_features or up.shape[0] != layer.out_features or up.shape[1] != down.shape[0]:
            raise ValueError(f"low-rank factors of {name} have shapes {tuple(up.shape)} @ {tuple(down.shape)}, "
                             f"the layer is {layer.out_features} x {layer.in_features}")
        layer.weight += (up @ down).to(layer.weight.dtype)
