"""Low-rank updates (`blt_hf.training.low_rank`): the hooked layer computes W x + scale * up down x, merging adds
exactly that product to W, and factors that do not fit the model are refused."""

import pytest
import torch
from torch import nn

from blt_hf.training.low_rank import add_low_rank, low_rank_factors, merge_low_rank, remove_low_rank


def small_stack():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5, bias=True), nn.ReLU(), nn.Linear(5, 3, bias=False))


def test_a_low_rank_layer_adds_scale_up_down_x_and_starts_as_the_plain_layer():
    stack = small_stack()
    x = torch.randn(4, 6)
    plain = stack(x)
    names = add_low_rank(stack, "", rank=2, alpha=6.0)
    assert names == ["0.low_rank_down", "0.low_rank_up", "2.low_rank_down", "2.low_rank_up"]
    assert torch.equal(stack(x), plain)  # up starts at zero
    with torch.no_grad():
        for layer in (stack[0], stack[2]):
            layer.low_rank_up.normal_()
    first = stack[0]
    expected = x @ first.weight.T + first.bias + 3.0 * (x @ first.low_rank_down.T) @ first.low_rank_up.T
    assert torch.allclose(stack[0](x), expected, atol=1e-6)


def test_merged_factors_give_the_hooked_model_and_leave_plain_layers():
    stack = small_stack()
    base = {k: v.clone() for k, v in stack.state_dict().items()}
    add_low_rank(stack, "", rank=3)
    with torch.no_grad():
        for layer in (stack[0], stack[2]):
            layer.low_rank_up.normal_()
    x = torch.randn(4, 6)
    hooked = stack(x)
    factors = low_rank_factors(stack)
    assert set(factors) == {"0.down", "0.up", "2.down", "2.up"}
    remove_low_rank(stack)
    assert set(stack.state_dict()) == set(base) and torch.equal(stack[0].weight, base["0.weight"])
    assert not stack[0]._forward_hooks
    merge_low_rank(stack, factors)
    assert torch.allclose(stack[0].weight, base["0.weight"] + factors["0.up"] @ factors["0.down"], atol=1e-6)
    assert torch.allclose(stack(x), hooked, atol=1e-5)


def test_low_rank_refuses_what_does_not_fit():
    stack = small_stack()
    with pytest.raises(ValueError, match="rank must be at least 1"):
        add_low_rank(stack, "", rank=0)
    with pytest.raises(ValueError, match="no nn.Linear under 'decoder.'"):
        add_low_rank(stack, "decoder.", rank=2)
    add_low_rank(stack, "0", rank=2)
    with pytest.raises(ValueError, match="already has low-rank factors"):
        add_low_rank(stack, "0", rank=2)
    with pytest.raises(ValueError, match="not a linear layer"):
        merge_low_rank(small_stack(), {"1.down": torch.zeros(2, 5), "1.up": torch.zeros(5, 2)})
    with pytest.raises(ValueError, match="one of its two factors is missing"):
        merge_low_rank(small_stack(), {"0.down": torch.zeros(2, 6)})
    with pytest.raises(ValueError, match=r"shapes \(5, 2\) @ \(2, 4\)"):
        merge_low_rank(small_stack(), {"0.down": torch.zeros(2, 4), "0.up": torch.zeros(5, 2)})
