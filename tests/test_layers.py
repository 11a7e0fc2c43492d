"""Memory-lean training paths compute the gradients of the plain formulas; the few-row inference matmul computes
the plain product."""

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blt_hf import layers
from blt_hf.layers import (
    BLTMLP,
    SMALL_BATCH_ROWS,
    BLTRMSNorm,
    faster_of,
    few_row_matmul,
    project,
    recompute_in_backward,
    row_major_matmul,
    small_batch_eligible,
    small_batch_matmul,
    weight_major_is_faster,
)


def test_lean_rmsnorm_backward_matches_autograd_of_the_formula():
    torch.manual_seed(0)
    norm = BLTRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.add_(torch.randn(16))
    x = torch.randn(3, 5, 16, requires_grad=True)
    upstream = torch.randn(3, 5, 16)
    (norm(x) * upstream).sum().backward()
    x_ref, w_ref = x.detach().double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    reference = w_ref * x_ref * torch.rsqrt(x_ref.pow(2).mean(-1, keepdim=True) + 1e-5)
    (reference * upstream.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), x_ref.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(norm.weight.grad.double(), w_ref.grad, atol=1e-5, rtol=1e-4)


def test_lean_swiglu_backward_matches_autograd_of_the_formula():
    torch.manual_seed(1)
    mlp = BLTMLP(8, 24)
    x = torch.randn(2, 7, 8, requires_grad=True)
    upstream = torch.randn(2, 7, 8)
    (mlp(x) * upstream).sum().backward()
    grads = [x.grad] + [m.weight.grad for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)]
    leaves = [t.detach().double().requires_grad_() for t in
              (x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)]
    xr, wg, wu, wd = leaves
    reference = F.linear(F.silu(F.linear(xr, wg)) * F.linear(xr, wu), wd)
    (reference * upstream.double()).sum().backward()
    for got, leaf in zip(grads, leaves, strict=True):
        torch.testing.assert_close(got.double(), leaf.grad, atol=1e-5, rtol=1e-4)


def test_recompute_in_backward_gives_the_same_gradients():
    torch.manual_seed(2)
    a = torch.randn(4, 6, requires_grad=True)

    def core(t):
        return torch.softmax(t @ t.T, -1) @ t

    core(a).square().sum().backward()
    plain = a.grad.clone()
    a.grad = None
    recompute_in_backward(core, a).square().sum().backward()
    torch.testing.assert_close(a.grad, plain)


@pytest.mark.parametrize("shape", [(1, 1), (2,), (1, 3), (2, 2), (4, 1)])
def test_small_batch_matmul_equals_the_plain_product_with_and_without_a_residual(shape):
    torch.manual_seed(2)
    x, weight, residual = torch.randn(*shape, 24), torch.randn(40, 24), torch.randn(*shape, 40)
    expected = x.double() @ weight.double().T
    out = small_batch_matmul(x, weight)
    assert out.shape == (*shape, 40) and out.is_contiguous()
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(small_batch_matmul(x, weight, residual).double(), expected + residual.double(),
                               atol=1e-5, rtol=1e-5)


def test_project_takes_the_few_row_matmul_only_where_it_applies():
    torch.manual_seed(3)
    linear = nn.Linear(16, 8, bias=False)
    few, many = torch.randn(SMALL_BATCH_ROWS, 16), torch.randn(SMALL_BATCH_ROWS + 1, 16)
    with torch.no_grad():
        assert small_batch_eligible(few, linear.weight) and not small_batch_eligible(many, linear.weight)
        assert not small_batch_eligible(few.double(), linear.weight.double())
        torch.testing.assert_close(project(linear, few), F.linear(few, linear.weight), atol=1e-6, rtol=1e-6)
        seen = []
        handle = linear.register_forward_hook(lambda module, args, out: seen.append(out.shape))
        project(linear, few)
        handle.remove()
        assert seen == [(SMALL_BATCH_ROWS, 8)]  # a hooked module is called normally
    assert not small_batch_eligible(few, linear.weight)  # autograd on: the plain call, gradients flow
    project(linear, few).sum().backward()
    assert linear.weight.grad is not None


@pytest.mark.parametrize("orientation", ["auto", "weight_major", "row_major"])
@pytest.mark.parametrize("shape", [(1, 1), (2,), (3, 1), (2, 2)])
def test_few_row_matmul_equals_the_plain_product_in_every_orientation(monkeypatch, orientation, shape):
    monkeypatch.setattr(layers, "FEW_ROW_ORIENTATION", orientation)
    torch.manual_seed(4)
    x, weight, residual = torch.randn(*shape, 24), torch.randn(40, 24), torch.randn(*shape, 40)
    expected = x.double() @ weight.double().T
    for transposed in (None, weight.t().contiguous()):
        out = few_row_matmul(x, weight, transposed=transposed)
        assert out.shape == (*shape, 40) and out.is_contiguous()
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(few_row_matmul(x, weight, residual, transposed).double(),
                                   expected + residual.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(row_major_matmul(x, weight).double(), expected, atol=1e-5, rtol=1e-5)


def test_faster_of_picks_the_faster_function():
    def slow():
        time.sleep(0.002)

    def fast():
        pass

    assert faster_of(fast, slow) and not faster_of(slow, fast)


def test_the_orientation_is_measured_once_per_shape_and_forced_by_the_setting(monkeypatch):
    monkeypatch.setattr(layers, "FEW_ROW_ORIENTATION", "auto")
    monkeypatch.setattr(layers, "_orientation_choices", {})
    calls = []
    monkeypatch.setattr(layers, "faster_of", lambda first, second: calls.append(1) or True)
    weight = torch.randn(8, 16)
    assert weight_major_is_faster(2, weight) and weight_major_is_faster(2, weight)
    assert len(calls) == 1  # the second call reads the kept choice
    weight_major_is_faster(3, weight)
    assert len(calls) == 2  # another row count is another shape
    monkeypatch.setattr(layers, "FEW_ROW_ORIENTATION", "row_major")
    assert not weight_major_is_faster(2, weight)
    monkeypatch.setattr(layers, "FEW_ROW_ORIENTATION", "weight_major")
    assert weight_major_is_faster(5, weight) and len(calls) == 2
    monkeypatch.setattr(layers, "FEW_ROW_ORIENTATION", "sideways")
    with pytest.raises(ValueError, match="BLT_HF_FEW_ROW_MATMUL"):
        weight_major_is_faster(2, weight)


def test_measuring_the_orientation_leaves_the_random_generator_alone(monkeypatch):
    monkeypatch.setattr(layers, "FEW_ROW_ORIENTATION", "auto")
    monkeypatch.setattr(layers, "_orientation_choices", {})
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    weight_major_is_faster(2, torch.ones(8, 16))  # measures: a sampled generation must not depend on it
    torch.testing.assert_close(torch.rand(3), expected)
