"""Prepare a data set: render synthetic episodes (or read a corpus manifest) into an episode store.

    python -m interaction_jax.data.prepare --task=mix --num_episodes=1000 --seed=0 --out=data/mix_train
    python -m interaction_jax.data.prepare --task=mix --num_episodes=100 --seed=1000003 --out=data/mix_eval
    python -m interaction_jax.data.prepare --manifest=corpus.jsonl --out=data/corpus

Writes ArrayRecord shards plus `manifest.json`, atomically: a crash never leaves a
half-written directory that looks complete, and an existing store is only replaced with
`--overwrite`. Log-mel features are computed once here and stored with each episode.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from absl import app, flags

from interaction_jax.data.episode import Episode
from interaction_jax.errors import UserError

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags (defined only when run as a program, so importing never clashes)."""
    flags.DEFINE_string("task", "mix", "Synthetic task name or 'mix'.")
    flags.DEFINE_integer("num_episodes", 64, "Number of synthetic episodes.", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Episode i uses seed + i. Keep train/eval seed ranges disjoint.", lower_bound=0)
    flags.DEFINE_float("episode_seconds", 12.0, "Duration of each synthetic episode.")
    flags.DEFINE_string("manifest", "", "A conversation-corpus manifest (JSON lines) instead of synthetic tasks.")
    flags.DEFINE_float("max_seconds", 60.0, "Corpus conversations are split into episodes of at most this long "
                       "(0 = not split).", lower_bound=0.0)
    flags.DEFINE_string("out", None, "Output directory (created atomically).")
    flags.DEFINE_integer("records_per_shard", 256, "Episodes per ArrayRecord shard.", lower_bound=1)
    flags.DEFINE_bool("overwrite", False, "Replace an existing store.")
    flags.DEFINE_integer("workers", 0, "Processes rendering synthetic episodes (0 = one per CPU core, at most 8).",
                         lower_bound=0)



def synthetic_episodes(task: str, num_episodes: int, seed: int, duration_s: float) -> Iterator[Episode]:
    from interaction_jax.data import tasks

    for i in range(num_episodes):
        yield tasks.generate(task, seed + i, duration_s=duration_s)


def _render_record(job: tuple[str, int, float]) -> bytes:
    """One synthetic episode rendered and serialised with its features (a worker process's unit)."""
    task, seed, duration_s = job
    return next(with_features(synthetic_episodes(task, 1, seed, duration_s)))


def synthetic_records(task: str, num_episodes: int, seed: int, duration_s: float, workers: int = 1) -> Iterator[bytes]:
    """Serialised episodes in seed order, rendered by `workers` processes (same bytes for any count)."""
    jobs = [(task, seed + i, duration_s) for i in range(num_episodes)]
    t0, every = time.time(), max(1, num_episodes // 10)
    if workers <= 1:
        records = map(_render_record, jobs)
        pool = None
    else:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
        records = pool.imap(_render_record, jobs, chunksize=4)
    try:
        for i, record in enumerate(records, 1):
            if i % every == 0 or i == num_episodes:
                print(f"[prepare] {i}/{num_episodes} episodes, {time.time() - t0:.0f} s", flush=True)
            yield record
    finally:
        if pool is not None:
            pool.terminate()


def corpus_episodes(manifest: str, max_seconds: float) -> Iterator[Episode]:
    from interaction_jax.data import corpus

    for spec in corpus.read_manifest(manifest):
        ep = corpus.load_conversation(spec)
        yield from corpus.split_long(ep, max_seconds) if max_seconds > 0 else [ep]


def with_features(episodes, feature_params=None) -> Iterator[bytes]:
    """Serialises episodes with their log-mel features attached as extras."""
    from interaction_jax.data.serialize import episode_to_bytes
    from interaction_jax.features.mel import FeatureParams, log_mel

    params = feature_params or FeatureParams()
    for ep in episodes:
        extras = {
            "user_logmel": log_mel(ep.user_audio, params).astype("float16"),
            "model_logmel": log_mel(ep.model_audio, params).astype("float16"),
        }
        yield episode_to_bytes(ep, extras=extras)


def prepare(
    out: str,
    *,
    task: str = "mix",
    num_episodes: int = 64,
    seed: int = 0,
    episode_seconds: float = 12.0,
    manifest: str = "",
    max_seconds: float = 60.0,
    records_per_shard: int = 256,
    overwrite: bool = False,
    workers: int = 1,
) -> str:
    """Writes the store and returns its path."""
    from interaction_jax.data.store import write_store

    if manifest:
        records = with_features(corpus_episodes(manifest, max_seconds))
        meta = {"source": "corpus", "manifest": manifest, "max_seconds": max_seconds}
    else:
        from interaction_jax.data import tasks

        tasks.check_task(task)
        records = synthetic_records(task, num_episodes, seed, episode_seconds, workers)
        meta = {"source": "synthetic", "task": task, "seed": seed, "episode_seconds": episode_seconds}
    t0 = time.time()
    write_store(out, records, records_per_shard=records_per_shard, metadata=meta, overwrite=overwrite)
    print(f"wrote {out} in {time.time() - t0:.1f}s")
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: prepare takes only flags")
    if not FLAGS.out:
        raise app.UsageError("--out=DIR is required")
    if not FLAGS.manifest and not FLAGS.episode_seconds > 0:
        raise UserError(f"--episode_seconds={FLAGS.episode_seconds}: expected a positive number of seconds")
    prepare(
        FLAGS.out,
        task=FLAGS.task,
        num_episodes=FLAGS.num_episodes,
        seed=FLAGS.seed,
        episode_seconds=FLAGS.episode_seconds,
        manifest=FLAGS.manifest,
        max_seconds=FLAGS.max_seconds,
        records_per_shard=FLAGS.records_per_shard,
        overwrite=FLAGS.overwrite,
        workers=FLAGS.workers or min(8, os.cpu_count() or 1),
    )


if __name__ == "__main__":
    from interaction_jax.cli import run as run_cli

    run_cli(main, name="prepare", define_flags=_define_flags)
