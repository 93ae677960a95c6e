"""The scoring stage of the audit flow: one detector at a time, each scored either

- whole (model-based detectors whose scoring is one ``score`` call): a Prefect task cached
  by a custom key (dataset fingerprint + detector config + seed + expected dirty rate +
  upstream detectors, see caching.py) with its result persisted under the cache directory;
- or in shards (row-independent detectors, and any detector overriding ``score_rows``):
  ``prepare`` once in the flow, shard tasks on the task runner (threads or Dask), each
  shard's scores written atomically to the RowStore as soon as it is done, then
  ``finalize`` on all scores. Rows found in the store are not scored again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.filesystems import LocalFileSystem
from prefect.futures import as_completed

from cleansers.base import DETECTORS, AuditContext, DetectorResult
from cleansers.run import build_detector, expand_result, readable_rows, run_detector
from pipelines.dataset import ImageDataset
from trainers.threads import fixed_threads

from .caching import detector_key, row_keys, whole_cache_key_fn, whole_key
from .params import AuditParams
from .progress import StageProgress
from .runners import resources
from .shards import RowStore, plan_shards


class ShardsFailed(RuntimeError):
    """Some shards kept failing after their retries; the finished ones are saved."""


@task(name="score", task_run_name="score-{name}", persist_result=True, cache_key_fn=whole_cache_key_fn)
def whole_task(name: str, ds: ImageDataset, ctx: AuditContext, options: dict, cache_key: str) -> DetectorResult:
    result = run_detector(name, ds, ctx, options)
    get_run_logger().info("%s flagged %d rows in %.1f s", name, int(result.flag.sum()), result.info["seconds"])
    return result


@task(name="score-shard", task_run_name="{name}-shard-{index}", cache_policy=NO_CACHE)
def shard_task(name: str, options: dict, shard: ImageDataset, rows: np.ndarray, ctx: AuditContext, state: Any,
               store_root: str, keys: np.ndarray, index: int) -> np.ndarray:
    detector = build_detector(name, options)
    scores = np.asarray(detector.score_rows(shard, rows, ctx, state), dtype=np.float64)
    if scores.shape != (len(shard),):
        raise ValueError(f"{name}.score_rows returned {scores.shape} scores for {len(shard)} rows")
    RowStore(store_root).write(keys, shard.sample_ids, scores)
    return scores


def result_storage(path: Path) -> LocalFileSystem:
    """A LocalFileSystem block for ``path``, saved server-side (Prefect 3 wants result storage
    persisted) under a name derived from the resolved path."""
    import hashlib

    path = Path(path).resolve()
    name = f"vetset-cache-{hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()}"
    block = LocalFileSystem(basepath=str(path))
    block.save(name, overwrite=True)
    return block


def is_sharded(name: str) -> bool:
    cls = DETECTORS.get(name)
    return bool(cls.row_independent) or cls.shards_for_real()


@dataclass
class Scorer:
    """Scores the detectors of one audit, in order, sharing one context."""

    params: AuditParams
    ds: ImageDataset
    ctx: AuditContext
    runner: Any  # a LazyRunner
    progress: StageProgress
    cache_dir: Path
    upstream: list[str] = field(default_factory=list)

    def score(self, name: str) -> DetectorResult:
        options = self.params.detector_options.get(name, {})
        if is_sharded(name):
            result = self._sharded(name, options)
        else:
            result = self._whole(name, options)
        self.ctx.results[name] = result
        self.upstream.append(result.info.get("cache_key", name))
        return result

    def _data_key(self) -> str:
        """What a model-based result depends on: the dataset, and the trusted set when given."""
        trusted = self.ctx.trusted
        return self.ds.fingerprint if trusted is None else f"{self.ds.fingerprint}+trusted:{trusted.fingerprint}"

    def _whole(self, name: str, options: dict) -> DetectorResult:
        p = self.params
        key = whole_key(detector_key(name, build_detector(name, options)), self._data_key(), p.seed,
                        p.expected_dirty_rate, self.upstream, self.ctx.threads)
        if p.cache:
            runnable = whole_task.with_options(result_storage=result_storage(self.cache_dir / "whole"),
                                               refresh_cache=p.refresh_cache)
        else:
            runnable = whole_task.with_options(cache_policy=NO_CACHE, cache_key_fn=None, persist_result=False)
        state = runnable(name, self.ds, self.ctx, options, key, return_state=True)
        result = state.result()
        reused = state.name == "Cached"
        n = int((~self.ds.unreadable).sum())
        result.info.update(cache_key=key, cache="whole" if p.cache else "off", rows_reused=n if reused else 0,
                           rows_computed=0 if reused else n)
        if not reused:
            result.info["cache_note"] = ("model-based detector: its scores depend on every row, so it is cached per "
                                         "(dataset fingerprint, config) as a whole and recomputed when the data changes")
        self.progress.advance(len(self.ds), description=f"{name} ({'cached' if reused else 'scored'})")
        return result

    def _sharded(self, name: str, options: dict) -> DetectorResult:
        p, ds, log = self.params, self.ds, get_run_logger()
        detector = build_detector(name, options)
        det_key = detector_key(name, detector)
        readable, view = readable_rows(ds)
        self.ctx.rows = readable
        start = time.perf_counter()
        with fixed_threads(self.ctx.threads):  # prepare may train a model (trainers/threads.py)
            state = detector.prepare(view, self.ctx)
        if detector.row_independent:
            store, key = RowStore(self.cache_dir / "rows" / det_key), det_key
        else:  # sharded but model-based: the shards serve resuming this dataset only
            key = whole_key(det_key, self._data_key(), p.seed, p.expected_dirty_rate, self.upstream, self.ctx.threads)
            store = RowStore(self.cache_dir / "whole" / key / "rows")
        keys = row_keys(view)
        if p.cache and not p.refresh_cache:
            found, scores = store.lookup(keys)
        else:
            found, scores = np.zeros(len(view), dtype=bool), np.full(len(view), np.nan)
        todo = np.flatnonzero(~found)
        shards = plan_shards(todo, p.shard_size)
        self.progress.advance(int(found.sum()) + (len(ds) - len(view)), description=f"{name} (shards)")
        log.info("%s: %d rows from the cache, %d to score in %d shard(s) of <= %d", name, int(found.sum()), len(todo),
                 len(shards), p.shard_size)
        if shards:
            scores = self._run_shards(name, options, view, state, store, keys, shards, scores)
        with fixed_threads(self.ctx.threads):
            inner = detector.finalize(view, scores, self.ctx, state)
        result = expand_result(name, len(ds), readable, inner, detector.config, time.perf_counter() - start)
        result.info.update(cache_key=key, cache="per-row" if detector.row_independent else "shards",
                           rows_reused=int(found.sum()), rows_computed=len(todo), shards=len(shards),
                           shard_size=p.shard_size, store=str(store.root))
        if not detector.row_independent:
            result.info["cache_note"] = "model-based detector: shards are reused only to resume the same dataset"
        return result

    def _run_shards(self, name, options, view, state, store, keys, shards, scores) -> np.ndarray:
        p = self.params
        light = AuditContext(device=self.ctx.device, seed=self.ctx.seed, trusted=self.ctx.trusted,
                             expected_dirty_rate=self.ctx.expected_dirty_rate)
        shard = shard_task.with_options(retries=p.shard_retries, retry_delay_seconds=0)
        runner = self.runner.get()
        futures = {}
        with resources(p.task_runner, gpu=self.runner.gpu):
            for index, rows in enumerate(shards):
                fut = runner.submit(shard, parameters=dict(
                    name=name, options=options, shard=view.subset(rows), rows=rows, ctx=light, state=state,
                    store_root=str(store.root), keys=keys[rows], index=index))
                futures[fut] = (index, rows)
        failed = []
        for fut in as_completed(list(futures)):  # every future is resolved, failed or not
            index, rows = futures[fut]
            try:
                scores[rows] = fut.result()
            except Exception as exc:  # the shard failed after its retries
                failed.append((index, f"{type(exc).__name__}: {exc}"))
            self.progress.advance(len(rows))
        if failed:
            done = len(shards) - len(failed)
            raise ShardsFailed(f"{name}: {len(failed)} of {len(shards)} shard(s) failed after {p.shard_retries} "
                               f"retries (first: shard {failed[0][0]}: {failed[0][1]}); the {done} finished shard(s) "
                               f"are saved in {store.root} and will be reused by the next run")
        return scores
