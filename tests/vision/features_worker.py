"""One rank of two computing features into one shared cache, for test_features.py.

    RANK=r WORLD_SIZE=2 MASTER_ADDR=... MASTER_PORT=... python features_worker.py IMAGES CACHE OUT

Rank 0's prefix is slow (0.3 s a chunk), so rank 1 finishes its own chunks first: it must still
read every file whole, which only holds if no rank returns before all have written theirs.
Each rank writes OUT/rank<r>.json: what it computed, the count returned, and the means it read back.
"""
import json
import sys
import time
from pathlib import Path

import torch
from torchvision.transforms.functional import to_tensor

import funclora.distributed as fld
from funclora.vision.features import FeatureFiles, cached_features


def main(images: Path, cache: Path, out: Path) -> int:
    world = fld.init("cpu")
    try:
        seen = []

        def prefix(x):
            if world.rank == 0:
                time.sleep(0.3)
            seen.append(x.shape[0])
            return (x.mean(dim=(2, 3)),)

        paths = sorted(images.iterdir())
        files, made = cached_features(paths, prefix, to_tensor, cache, "k", batch_size=2, progress=False, world=world)
        data = FeatureFiles(files, [0] * len(files))
        means = [data[i][0][0].tolist() for i in range(len(files))]  # at once: no waiting for rank 0 here
        (out / f"rank{world.rank}.json").write_text(json.dumps({"seen": seen, "made": made, "means": means}))
        return 0
    finally:
        fld.shutdown(world)


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main(*map(Path, sys.argv[1:4])))
