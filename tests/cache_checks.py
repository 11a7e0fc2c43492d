"""Field-by-field comparison of two `BLTCache`s: what a rolled-back cache must hold against plain decoding's."""

from __future__ import annotations

import torch

from blt_hf.patching import move_kept_to_front


def _window_fields(cache):
    if cache is None:
        return None
    fields = {"length": cache.length, "valid": cache.valid}
    span = slice(cache.start, cache.end)
    if cache._segments is not None:
        fields["segments"] = cache._segments[:, span]
    fields["keys"] = [None if k is None else k[:, :, span] for k in cache.keys]
    fields["values"] = [None if v is None else v[:, :, span] for v in cache.values]
    return fields


def _assert_equal(name, a, b, atol):
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), name
        for key in a:
            _assert_equal(f"{name}.{key}", a[key], b[key], atol)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), name
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(f"{name}[{i}]", x, y, atol)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, f"{name}: {getattr(b, 'shape', b)} != {a.shape}"
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")
        else:
            assert torch.equal(a, b), f"{name}: {a.tolist()} != {b.tolist()}"
    else:
        assert a == b, f"{name}: {a} != {b}"


def assert_same_cache(cache, expected, atol: float = 1e-5) -> None:
    """Every field that decides later outputs: counts, byte history, patching state, the live spans of the window
    caches (keys, values, validity, segments), each row's patch keys/values, the open patch's states and the
    decoder's current patch. Slot readouts are derived from the current patch (remade when absent)."""
    for name in ("seen_tokens", "continuable"):
        _assert_equal(name, getattr(expected, name), getattr(cache, name), atol)
    for name in ("num_bytes", "byte_history", "open_patch_begin"):
        _assert_equal(name, getattr(expected, name), getattr(cache, name), atol)
    _assert_equal("patching", vars(expected.patching), vars(cache.patching), atol)
    for name in ("patcher", "encoder", "decoder"):
        _assert_equal(name, _window_fields(getattr(expected, name)), _window_fields(getattr(cache, name)), atol)
    _assert_equal("global.lengths", expected.global_.lengths, cache.global_.lengths, atol)
    width = int(expected.global_.lengths.max()) if expected.global_.lengths.numel() else 0
    kept = torch.arange(width)[None] < expected.global_.lengths[:, None]
    for layer, (ka, kb) in enumerate(zip(expected.global_.keys, cache.global_.keys, strict=True)):
        if width:
            _assert_equal(f"global.keys[{layer}]", ka[:, :, :width].transpose(1, 2)[kept],
                          kb[:, :, :width].transpose(1, 2)[kept], atol)
    for layer, (va, vb) in enumerate(zip(expected.global_.values, cache.global_.values, strict=True)):
        if width:
            _assert_equal(f"global.values[{layer}]", va[:, :, :width].transpose(1, 2)[kept],
                          vb[:, :, :width].transpose(1, 2)[kept], atol)

    def open_patch(c):
        if c.open_patch_states is None:
            return None
        return [move_kept_to_front(s, c.open_patch_valid) for s in c.open_patch_states]

    _assert_equal("open_patch", open_patch(expected), open_patch(cache), atol)
    _assert_equal("current_patch_kv", expected.current_patch_kv, cache.current_patch_kv, atol)
    if expected.current_patch_readouts is not None and cache.current_patch_readouts is not None:
        _assert_equal("current_patch_readouts", expected.current_patch_readouts, cache.current_patch_readouts, atol)
