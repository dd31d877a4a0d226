"""Lightning callbacks shared by every training job."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RNGStateCheckpoint(L.Callback):
    """Save the Python / NumPy / torch RNG states in checkpoints and restore them on resume.

    Lightning restores weights, optimiser and loop state but not the global RNGs, so dropout
    and masking would differ after a resume; with this callback (and epoch-seeded shuffling) a
    resumed job continues exactly like an uninterrupted one.
    """

    def state_dict(self) -> dict[str, Any]:
        return {
            "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2],
            "numpy": np.random.get_state()[1].tolist(),
            "numpy_pos": int(np.random.get_state()[2]),
            "torch": torch.get_rng_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate((state_dict["python_version"], tuple(state_dict["python"]), state_dict["python_gauss"]))
        np.random.set_state(("MT19937", np.asarray(state_dict["numpy"], dtype=np.uint32), state_dict["numpy_pos"], 0, 0.0))
        torch.set_rng_state(state_dict["torch"])
