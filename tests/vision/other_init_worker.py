"""`funclora ARGS`, except that every rank draws other starting adapters and head (seed + rank):
a data-parallel run must still train rank 0's on every rank (the broadcast). For test_training_parallel.py:

    torchrun --nproc-per-node 2 other_init_worker.py train DATASET_DIR ...
"""
import os
import sys

import funclora.vision.training as training
from funclora.vision.cli import main

RANK = int(os.environ.get("RANK", "0"))
_init_lora, _new_head = training.init_lora, training.new_head
training.init_lora = lambda model, cfg, seed=0: _init_lora(model, cfg, seed=seed + RANK)
training.new_head = lambda features, classes, seed=0: _new_head(features, classes, seed=seed + RANK)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
