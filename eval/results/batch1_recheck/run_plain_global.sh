#!/bin/bash
# batch-1 decode recheck for issue 17 after the global transformer went back to plain layers: baseline 40a0111
# (git worktree add /tmp/base 40a0111) and current main, alternating, same command
ARGS="--contexts 256,4096 --new-bytes 32 --reference-steps 2 --repeats 3 --threads 1 --batch 4"
for round in 1 2 3 4 5 6; do
  for tree in /tmp/base /work/main; do
    echo "=== round $round tree $tree commit $(git -C $tree rev-parse --short HEAD) load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)"
    (cd $tree && PYTHONPATH=$tree/src /work/main/.venv/bin/python eval/bench_generate.py $ARGS 2>&1 | grep -v "it/s\]")
  done
done
echo "=== done $(date -u +%H:%M:%S)"
