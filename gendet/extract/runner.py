"""The extraction job without Ray: ``prepare`` (validate and plan), a plain loop over reader ->
mapper -> writer with torch DataLoader workers for decoding (``run_local``), and ``finish``
(manifest and summary). The Ray pipeline (``pipelines/extract.py``) shares ``prepare`` and
``finish`` and only swaps the loop; this one runs where Ray is absent (a bare GPU box) and is the
benchmark's baseline.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from gendet import GendetError
from gendet import io as gio
from gendet.config import to_dict
from gendet.data.shards import list_shards, shard_stem
from gendet.extract.config import ExtractConfig
from gendet.extract.lease import StoreLease
from gendet.extract.manifest import (
    VariantInfo,
    check_compatible,
    plan_shards,
    reason_counts,
    rebuild_manifest,
    stored_token_layout,
)
from gendet.extract.mapper import FeatureMapper
from gendet.extract.reader import ShardReader
from gendet.extract.tokens import resolve_token_grid
from gendet.extract.writer import ShardAssembler, ShardRows, write_shard
from gendet.progress import progress


@dataclass
class Plan:
    """A validated run: the shards, what is left to do, where it goes, how images are prepared."""

    cfg: ExtractConfig
    shards: list[str]
    todo: list[str]
    skipped: list[str]
    info: VariantInfo
    reader: ShardReader
    redo: dict[str, str] = field(default_factory=dict)
    lease: StoreLease | None = None
    started: float = field(default_factory=time.perf_counter)

    def url_of(self, stem: str) -> str:
        return next((u for u in self.todo if shard_stem(u) == stem), "")

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None


def prepare(cfg: ExtractConfig, *, lease: bool = False) -> Plan:
    """Every check that can fail on user input, before any worker or Ray starts: shards exist,
    encoder and degradation are known, weights exist, the output variant is compatible. With
    ``lease``, the variant folder's lease is taken before the plan is made (``Plan.release``
    gives it back), so no other run writes the store until this one is finished."""
    from gendet.data.degradations import parse_degrade
    from gendet.encoders.registry import load_preprocess, parse_encoder_name

    shards = list_shards(cfg.shards)
    name = parse_encoder_name(cfg.encoder).name
    token_grid, token_dim = resolve_token_grid(name, cfg.tokens, cfg.token_grid)
    degrade = parse_degrade(cfg.degrade)
    if cfg.weights and not gio.exists(cfg.weights):
        raise GendetError(f"{cfg.weights}: weights file not found; pass --weights a checkpoint (local path or fsspec URL)")
    preprocess = load_preprocess(name)
    info = VariantInfo.of(store=str(cfg.features), encoder=name, preprocess_hash=preprocess.preprocess_hash,
                          degrade=degrade.spec, dtype=cfg.feature_dtype, weights=cfg.weights, precision=cfg.precision,
                          token_grid=token_grid, token_dim=token_dim)
    try:
        gio.makedirs(info.url)
    except OSError as exc:
        raise GendetError(f"{cfg.features}: cannot create the feature store here ({exc}); pass a writable FEATURES URL") from exc
    held = StoreLease(info.url).acquire() if lease else None
    try:
        info = stored_token_layout(info)
        check_compatible(info)
        todo, skipped, redo = plan_shards(shards, info, cfg.mode)
    except BaseException:
        if held is not None:
            held.release()
        raise
    reader = ShardReader(preprocess, degrade=degrade if degrade.spec else None, batch_size=cfg.batch_size,
                         max_retries=cfg.max_retries, token_grid=info.token_grid)
    return Plan(cfg=cfg, shards=shards, todo=todo, skipped=skipped, info=info, reader=reader, redo=redo, lease=held)


def write_with_retries(plan: Plan, shard: ShardRows) -> dict[str, Any]:
    """Write one complete shard, retrying transient storage errors ``max_retries`` times."""
    if shard.error:
        raise GendetError(shard.error)
    check_lease(plan)
    for attempt in range(plan.cfg.max_retries):
        try:
            return write_shard(shard, plan.info, url=plan.url_of(shard.stem), config=to_dict(plan.cfg))
        except OSError:
            time.sleep(min(2.0**attempt, 10.0))
    return write_shard(shard, plan.info, url=plan.url_of(shard.stem), config=to_dict(plan.cfg))  # last try raises


def consume(plan: Plan, batches: Iterator[dict[str, Any]], mapper: Callable | None = None) -> tuple[list, dict]:
    """Assemble mapper output into shards and write each as it completes.
    Returns (stats of written shards, {stem: error} of failed ones)."""
    assembler, done, failed = ShardAssembler(), [], {}
    with progress(total=len(plan.todo), unit="shard", desc="extract") as bar:
        for batch in batches:
            for shard in assembler.add(mapper(batch) if mapper else batch):
                try:
                    done.append(write_with_retries(plan, shard))
                except (GendetError, OSError) as exc:
                    failed[shard.stem] = str(exc)
                bar.update(1)
                bar.set_postfix(images=sum(s["written"] for s in done), failed=len(failed))
    mark_incomplete(failed, assembler.pending)
    return done, failed


def check_lease(plan: Plan) -> None:
    """Before a shard is written: never two writers of a variant; stop rather than mix."""
    if plan.lease is not None and plan.lease.lost:
        raise GendetError(f"{plan.lease.lost}; this run stopped writing")


def mark_incomplete(failed: dict[str, str], stems: Iterable[str]) -> None:
    """Shards whose rows came but never all of them: reported failed, never half-written."""
    for stem in stems:
        failed.setdefault(stem, f"{stem}: incomplete (rows missing); run again to redo it")


def finish(plan: Plan, done: list[dict], failed: dict[str, str]) -> dict[str, Any]:
    """Rebuild the manifest and return this run's summary."""
    seconds = time.perf_counter() - plan.started
    fs, path = gio.fs_and_path(plan.info.url)
    fs.invalidate_cache(path)  # other processes wrote the shards: an object store's cached listing is stale
    manifest = rebuild_manifest(plan.info)
    images = sum(s["written"] for s in done)
    return {"output": plan.info.url, "encoder": plan.info.encoder, "degrade": plan.info.degrade,
            "shards": len(plan.shards), "shards_done": len(done), "shards_skipped": len(plan.skipped),
            "shards_redone": dict(sorted(plan.redo.items())), "store_damaged": manifest.get("damaged", {}),
            "shards_failed": dict(sorted(failed.items())), "shards_written": sorted(s["shard"] for s in done),
            "read": sum(s["read"] for s in done), "images": images,
            "quarantined": sum(s["quarantined"] for s in done), "quarantined_by_reason": reason_counts(done),
            "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 2) if seconds > 0 else 0.0,
            "store_rows": manifest["rows"]}


def format_summary(summary: dict[str, Any]) -> str:
    reasons = ", ".join(f"{r}={n}" for r, n in summary["quarantined_by_reason"].items()) or "none"
    lines = [f"extracted {summary['images']} images from {summary['shards_done']} shards "
             f"({summary['shards_skipped']} already done) in {summary['seconds']:.1f} s: "
             f"{summary['images_per_s']:.1f} images/s",
             f"quarantined {summary['quarantined']}: {reasons}",
             f"output: {summary['output']} ({summary['store_rows']} rows in the store)"]
    for stem, why in summary.get("shards_redone", {}).items():
        lines.append(f"redid {stem}: {why}")
    for stem, why in summary.get("store_damaged", {}).items():
        lines.append(f"DAMAGED {stem}: {why}")
    for stem, error in summary["shards_failed"].items():
        lines.append(f"FAILED {stem}: {error}")
    if summary["shards_failed"]:
        lines.append("run the same command again to redo the failed shards")
    return "\n".join(lines)


class _ShardStream(torch.utils.data.IterableDataset):
    """Each DataLoader worker reads its own shards (every n-th), whole, in order."""

    def __init__(self, reader: ShardReader, urls: list[str]):
        self.reader, self.urls = reader, urls

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        urls = self.urls if worker is None else self.urls[worker.id :: worker.num_workers]
        for url in urls:
            yield from self.reader.read(url)


def _as_is(batch: Any) -> Any:
    return batch  # keep numpy columns as they are (the default would turn them into tensors)


def _die_with_parent(parent: int, _worker_id: int) -> None:
    """A decode worker is killed with the run: torch's watchdog notices a dead parent only between
    samples, and a worker reading a large shard outlived a SIGKILLed run by over a minute (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call
            os._exit(1)


def shard_loader(plan: Plan) -> torch.utils.data.DataLoader:
    workers = min(plan.cfg.decode_workers, len(plan.todo))
    return torch.utils.data.DataLoader(_ShardStream(plan.reader, plan.todo), batch_size=None, num_workers=workers,
                                       collate_fn=_as_is, prefetch_factor=4 if workers else None,
                                       persistent_workers=False,
                                       worker_init_fn=functools.partial(_die_with_parent, os.getpid()))


def run_local(cfg: ExtractConfig) -> dict[str, Any]:
    """Extract without Ray; returns the summary (also the manifest is rebuilt)."""
    plan = prepare(cfg, lease=True)
    try:
        if not plan.todo:
            return finish(plan, [], {})
        mapper = FeatureMapper(plan.info.encoder, weights=cfg.weights, device=cfg.device, precision=cfg.precision,
                               feature_dtype=cfg.feature_dtype, token_grid=plan.info.token_grid,
                               token_dim=plan.info.token_dim)
        done, failed = consume(plan, iter(shard_loader(plan)), mapper)
        return finish(plan, done, failed)
    finally:
        plan.release()
