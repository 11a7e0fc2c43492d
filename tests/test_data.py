"""The datasets pipeline: packing, precomputed patches, the collator, and training on packed rows."""

import torch

from blt_hf import PatchingRule, compute_patch_lengths
from blt_hf.training.data import BLTDataCollator, add_patch_lengths, pack_documents, text_dataset
from tests.test_generation import build_model

DOCUMENTS = ["First document, short.", "Second one is a little longer than the first one, by design." * 2, "Third!"]


def test_packing_fills_rows_restarts_positions_and_splits_long_documents_behind_a_bos():
    rows = pack_documents(text_dataset(dataset=_docs()), row_length=32)
    ids = torch.tensor(rows["input_ids"])
    positions = torch.tensor(rows["position_ids"])
    mask = torch.tensor(rows["attention_mask"])
    assert ids.shape[1] == 32 and (mask[:-1] == 1).all()  # every row but the last is full
    assert ((positions == 0) == ((ids == 1) | (mask == 0))).all()  # positions restart exactly at each BOS
    pieces = bytes(b - 4 for b in ids[mask.bool()].tolist() if b != 1)
    assert pieces == "".join(DOCUMENTS).encode()  # nothing lost, nothing added but BOS
    assert int((ids == 1).sum()) > len(DOCUMENTS)  # the long document was split


def _docs():
    from datasets import Dataset

    return Dataset.from_dict({"body": DOCUMENTS}).rename_column("body", "text")


def test_precomputed_patches_are_each_documents_own_patches():
    model = build_model("entropy", 5)
    rows = add_patch_lengths(pack_documents(text_dataset(dataset=_docs()), row_length=64), model)
    rule = PatchingRule.from_config(model.config)
    for row in rows:
        ids, positions = torch.tensor(row["input_ids"]), torch.tensor(row["position_ids"])
        valid = torch.tensor(row["attention_mask"]).bool()
        lengths = torch.tensor(row["patch_lengths"])
        assert int(lengths.sum()) == int(valid.sum()) + 1
        starts = set((lengths.cumsum(0) - lengths).tolist())
        bounds = (positions == 0).nonzero().flatten().tolist() + [int(valid.sum())]
        for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
            if not valid[begin]:
                break
            alone, _ = compute_patch_lengths(ids[None, begin:end], None, rule, model.model.patcher)
            alone = alone[0][alone[0] > 0]
            expected = {begin + s for s in (alone.cumsum(0) - alone).tolist() if s < end - begin}
            assert {s for s in starts if begin <= s < end} == expected


def test_collator_masks_padding_and_every_bos_and_pads_patch_lengths():
    rows = pack_documents(text_dataset(dataset=_docs()), row_length=40)
    rows = add_patch_lengths(rows, build_model("space", 0))
    batch = BLTDataCollator()([rows[i] for i in range(len(rows))])
    assert set(batch) == {"input_ids", "attention_mask", "position_ids", "labels", "patch_lengths"}
    ids, labels = batch["input_ids"], batch["labels"]
    assert (labels[ids == 1] == -100).all() and (labels[batch["attention_mask"] == 0] == -100).all()
    kept = (ids != 1) & (batch["attention_mask"] == 1)
    assert (labels[kept] == ids[kept]).all()
    assert torch.equal(batch["patch_lengths"].sum(1), batch["attention_mask"].sum(1) + 1)


def test_packed_loss_is_the_loss_of_the_documents_run_separately():
    model = build_model("entropy", 6)
    rows = add_patch_lengths(pack_documents(text_dataset(dataset=_docs()), row_length=200), model)
    batch = BLTDataCollator()(list(rows))
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        packed = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 260), batch["labels"][:, 1:].reshape(-1),
                                                   ignore_index=-100, reduction="sum")
        separate = sum(
            model(ids, labels=ids, use_cache=False).loss * (ids.shape[1] - 1)
            for ids in (torch.tensor([[1] + [b + 4 for b in doc.encode()]]) for doc in DOCUMENTS)
        )
    torch.testing.assert_close(packed, separate, atol=1e-3, rtol=1e-5)


def test_cached_rows_are_built_once_and_reloaded_equal(tmp_path):
    from blt_hf.training.data import cached_rows

    calls = []

    def build():
        calls.append(1)
        return pack_documents(text_dataset(dataset=_docs()), row_length=64)

    first = cached_rows(tmp_path / "rows", build)
    again = cached_rows(tmp_path / "rows", build)
    assert len(calls) == 1
    assert first["input_ids"] == again["input_ids"] == build()["input_ids"]
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_rows_fingerprint_follows_text_packing_and_patching(tmp_path):
    from blt_hf.training.data import rows_fingerprint

    (tmp_path / "a.txt").write_text("some text")
    files = [str(tmp_path / "a.txt")]
    base = rows_fingerprint(files, 128)
    assert rows_fingerprint(files, 128) == base
    assert rows_fingerprint(files, 256) != base
    assert rows_fingerprint(files, 128, split_paragraphs=True) != base
    model = build_model("entropy", 6)
    with_patches = rows_fingerprint(files, 128, model=model)
    assert with_patches != base
    model.config.patching_threshold += 0.5
    assert rows_fingerprint(files, 128, model=model) != with_patches
    (tmp_path / "a.txt").write_text("other text")
    assert rows_fingerprint(files, 128) != base


def test_rows_fingerprint_follows_a_datasets_content_and_text_column(tmp_path):
    from datasets import Dataset, load_from_disk

    from blt_hf.training.data import rows_fingerprint

    Dataset.from_dict({"body": ["one", "two"], "title": ["a", "b"]}).save_to_disk(tmp_path / "d")
    base = rows_fingerprint([], 128, dataset=load_from_disk(tmp_path / "d"), text_column="body")
    assert rows_fingerprint([], 128, dataset=load_from_disk(tmp_path / "d"), text_column="body") == base  # reloaded
    assert rows_fingerprint([], 128, dataset=load_from_disk(tmp_path / "d"), text_column="title") != base
    assert rows_fingerprint([], 256, dataset=load_from_disk(tmp_path / "d"), text_column="body") != base
    Dataset.from_dict({"body": ["one", "three"], "title": ["a", "b"]}).save_to_disk(tmp_path / "e")
    assert rows_fingerprint([], 128, dataset=load_from_disk(tmp_path / "e"), text_column="body") != base
    assert rows_fingerprint([], 128) != base
