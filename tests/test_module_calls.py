"""`module_calls`: the private torch names it reads exist, and hooked modules still get the normal call."""

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from blt_hf.module_calls import GLOBAL_HOOK_NAMES, MODULE_HOOK_ATTRIBUTES, direct_call, has_hooks


def test_the_private_torch_names_it_reads_exist_in_the_installed_torch():
    for name in GLOBAL_HOOK_NAMES:
        assert isinstance(getattr(torch_module, name, None), dict), f"torch.nn.modules.module.{name} is gone"
    linear = nn.Linear(2, 2)
    for name in MODULE_HOOK_ATTRIBUTES:
        assert hasattr(linear, name), f"nn.Module instances lost the private attribute {name}"
    assert linear._compiled_call_impl is None
    assert callable(torch._C._get_tracing_state) and torch._C._get_tracing_state() is None


def test_direct_call_runs_module_and_global_hooks_and_skips_the_machinery_otherwise():
    linear, x = nn.Linear(3, 3), torch.randn(2, 3)
    assert not has_hooks(linear)
    torch.testing.assert_close(direct_call(linear, x), linear(x))
    handle = linear.register_forward_hook(lambda module, args, output: output * 0)
    assert has_hooks(linear) and not direct_call(linear, x).any()
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, output: output * 0)
    try:
        assert has_hooks(linear) and not direct_call(linear, x).any()
    finally:
        handle.remove()
    assert not has_hooks(linear)
    linear._compiled_call_impl = linear.forward  # what nn.Module.compile() sets
    assert has_hooks(linear)
