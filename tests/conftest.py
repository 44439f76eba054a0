import os

import torch
from hypothesis import HealthCheck, settings

# Examples are drawn from a fixed seed in CI so a red run is reproducible; locally they vary.
settings.register_profile("default", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
# Mutation testing (README: Tests) runs the suite once per mutant: fewer drawn examples, the explicit ones all.
settings.register_profile("mutation", parent=settings.get_profile("ci"), max_examples=10)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
