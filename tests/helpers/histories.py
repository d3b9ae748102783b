"""The history of a real short training run (the library's trainer, debug preset, a tiny in-memory
source): what the diagnostics plot and the training report read, without a Ray job."""

from __future__ import annotations

from typing import Any


def short_training_history(rotations: int = 3, **overrides: Any) -> list[dict[str, Any]]:
    import torch

    from gendet.features.sources import TensorSource, synthetic_clusters
    from gendet.method.gendet.config import preset
    from gendet.method.gendet.trainer import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = synthetic_clusters(64, 32, seed=1)
        cfg = preset("debug", **{"width": 16, "heads": 2, "batch_size": 32, "rotations": rotations, **overrides})
        return Trainer(cfg, TensorSource(x, y, batch_size=32, seed=3)).train()
    finally:
        torch.set_num_threads(threads)
