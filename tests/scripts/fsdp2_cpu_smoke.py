"""torchrun --nproc_per_node 2 tests/scripts/fsdp2_cpu_smoke.py OUT.json

Shard a tiny BLT with torch FSDP2 (`fully_shard` on every transformer layer and cross-attention, then the root)
over 2 CPU processes (gloo), take 3 optimizer steps on a fixed global batch split across the ranks, and write the
losses. accelerate only enables FSDP on accelerator backends; this checks the model itself shards on CPU.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, ".")
from blt_hf.layers import BLTCrossAttention, BLTTransformerLayer  # noqa: E402
from tests.utils import random_ids, tiny_model  # noqa: E402


def main(out):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = tiny_model(seed=0, patching_mode="space", has_patcher=False).train()
    for module in model.modules():
        if isinstance(module, (BLTTransformerLayer, BLTCrossAttention)):
            fully_shard(module)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = random_ids(48, seed=1, batch=4)
    local = ids[rank * 4 // world : (rank + 1) * 4 // world]
    losses = []
    for _ in range(3):
        loss = model(local, labels=local, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        reduced = loss.detach().clone()
        dist.all_reduce(reduced)
        losses.append(reduced.item() / world)
    sharded = sum(1 for p in model.parameters() if type(p).__name__ == "DTensor")
    if rank == 0:
        with open(out, "w") as handle:
            json.dump({"losses": losses, "sharded_parameters": sharded}, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
