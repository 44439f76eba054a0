#!/usr/bin/env python3
"""The `funclora` command without installing it: `python scripts/train.py train data/goldfish`.

Same arguments as `funclora` (see `python scripts/train.py --help`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's funclora

from funclora.vision.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
