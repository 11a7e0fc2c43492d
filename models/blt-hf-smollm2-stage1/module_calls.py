"""Calling small modules without `nn.Module.__call__` when nothing would notice.

Decoding one byte makes about 150 module calls through the small local stacks, and the call machinery costs as
much as a small kernel each time. `direct_call` skips it when a module has no hooks (its own or global ones), is
not compiled and is not being traced. This is the only file that reads private torch internals; the names it relies
on are pinned by `tests/test_module_calls.py`, so a torch upgrade that renames them fails loudly there.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

# private attributes of nn.Module instances (`has_hooks`) and of torch.nn.modules.module (`_GLOBAL_HOOKS`)
MODULE_HOOK_ATTRIBUTES = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_compiled_call_impl",
)
GLOBAL_HOOK_NAMES = (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks",
)


def has_hooks(module: nn.Module) -> bool:
    """Whether calling `module` runs anything besides its forward (hooks on it or global ones, compile, tracing)."""
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
        or _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks
        or _torch_module._global_backward_hooks or _torch_module._global_backward_pre_hooks
        or module._compiled_call_impl is not None or torch._C._get_tracing_state()
    )


def direct_call(module: nn.Module, *args):
    """`module(*args)`, calling `module.forward` directly when `has_hooks` says nothing else would run.

    Hooked modules (accelerate offloading, FSDP, output recorders) still get the normal call.
    """
    return module(*args) if has_hooks(module) else module.forward(*args)
