"""`python -m funclora ...` is the `funclora` command (and what torchrun runs: `-m funclora`)."""
import sys

from .vision.cli import main

sys.exit(main())
