"""Bad input gets a clear ValueError: ids, patch lengths, masks, lengths, dtypes."""

import pytest
import torch

from tests.utils import random_ids, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0, max_position_embeddings=64)


@pytest.mark.parametrize("bad", [-1, 260, 1000])
def test_ids_outside_the_byte_vocabulary_are_rejected(model, bad):
    ids = random_ids(10)
    ids[0, 5] = bad
    with pytest.raises(ValueError, match="input_ids must be in 0..259"):
        model(ids)


def test_float_ids_are_rejected(model):
    with pytest.raises(ValueError, match="integer tensor"):
        model(random_ids(10).float())


def test_one_dimensional_ids_are_rejected(model):
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        model(random_ids(10)[0])


def test_inputs_embeds_are_rejected(model):
    with pytest.raises(ValueError, match="needs input_ids"):
        model(random_ids(4), inputs_embeds=torch.zeros(1, 4, 32))


def test_sequences_longer_than_the_configured_maximum_are_rejected(model):
    model(random_ids(64))
    with pytest.raises(ValueError, match="longer than max_position_embeddings=64"):
        model(random_ids(65))


@pytest.mark.parametrize(
    "lengths, message",
    [
        ([[1, 3, 3]], "sum to 7, but the row has 10 bytes"),
        ([[1, 3, 3, 5]], "sum to 12"),
        ([[1, 5, -1, 5]], "negative"),
        ([[1, 0, 4, 5]], "zero-length patch before a non-empty one"),
        ([[2, 4, 4]], "first patch must be exactly one byte"),
        ([[1.0, 4.0, 5.0]], "integer tensor"),
        ([1, 4, 5], r"shape \[batch, num_patches\]"),
    ],
)
def test_invalid_patch_lengths_are_rejected(model, lengths, message):
    with pytest.raises(ValueError, match=message):
        model(random_ids(10), patch_lengths=torch.tensor(lengths))


def test_valid_patch_lengths_in_both_conventions_are_accepted(model):
    ids = random_ids(10)
    a = model(ids, patch_lengths=torch.tensor([[1, 4, 5, 1]])).logits  # official: sums to n + 1
    b = model(ids, patch_lengths=torch.tensor([[1, 4, 5, 0]])).logits  # transformers: trailing 0 = start at n
    torch.testing.assert_close(a, b)


def test_attention_mask_with_a_hole_is_rejected(model):
    with pytest.raises(ValueError, match="padding between real bytes"):
        model(random_ids(6), attention_mask=torch.tensor([[1, 1, 0, 1, 1, 1]]))


def test_attention_mask_of_the_wrong_width_is_rejected(model):
    with pytest.raises(ValueError, match="attention_mask has 4 columns"):
        model(random_ids(6), attention_mask=torch.ones(1, 4))
