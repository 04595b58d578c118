"""Under torchrun: each rank streams a token set with :class:`TokenShardDataset` and writes the keys it
read to ``OUT/rank<r>.json``. Usage: ``read_token_shards_worker.py SET_DIR OUT``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from polytok.tokensets.shards import TokenShardDataset

if __name__ == "__main__":
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group(backend="gloo")
    keys = [sample["key"] for sample in TokenShardDataset(source)]
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(keys))
    dist.barrier()
    dist.destroy_process_group()
