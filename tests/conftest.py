import os

import torch
from hypothesis import HealthCheck, Phase, settings

# Examples are drawn from a fixed seed in CI so a red run is reproducible; locally they vary.
settings.register_profile("default", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
# Under mutation testing (mutmut sets MUTANT_UNDER_TEST) a failure only has to be found, not shrunk.
settings.register_profile("mutation", parent=settings.get_profile("ci"),
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile("mutation" if os.environ.get("MUTANT_UNDER_TEST") else "ci" if os.environ.get("CI") else "default")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
