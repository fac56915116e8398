"""A bundle's smoke set (``report/smoke.npz``): held-out inputs and the probabilities the bundle gave them.

``training evaluate`` writes it; ``publish`` and the twin's parity check reload it and must reproduce
the probabilities. The inputs are stored as 8-bit grey levels plus the bundle's scale and offset.
"""

from __future__ import annotations

import numpy as np

SMOKE_TOLERANCE = 1e-4  # max |probability difference| allowed when a bundle is re-checked at publish


def smoke_inputs(smoke) -> np.ndarray:
    """The float32 model inputs of a smoke set (``levels x scale + offset``)."""
    levels = np.asarray(smoke["levels"], dtype=np.float32)
    return levels * np.float32(smoke["scale"]) + np.float32(smoke["offset"])
