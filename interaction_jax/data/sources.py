"""Random-access episode sources for the Grain pipeline.

`SyntheticSource` renders synthetic interaction episodes on demand (deterministic per index:
episode i uses seed `seed + i`), so the tiny default needs no prepared data. `open_source`
picks a prepared store when `data.data_dir` is set, else synthetic episodes.
"""

from __future__ import annotations

import functools

import numpy as np

from interaction_jax.data.episode import Episode


class SyntheticSource:
    """Episodes of `task` ("mix" or a task name) generated from seeds seed, seed+1, ...

    Attaches log-mel features as extras so the pipeline does not recompute them per window.
    Picklable (for Grain worker processes); each process keeps its own small LRU cache.
    """

    def __init__(self, task: str, num_episodes: int, seed: int, duration_s: float, feature_config=None):
        from interaction_jax.data import tasks

        tasks.check_task(task)  # a task name, "mix" or a weighted "mix:task=w,..." (raises naming the problem)
        if num_episodes <= 0:
            raise ValueError(f"num_episodes must be > 0, got {num_episodes}")
        self.task, self.num_episodes, self.seed, self.duration_s = task, num_episodes, seed, duration_s
        self.feature_config = feature_config

    def __len__(self) -> int:
        return self.num_episodes

    def __getitem__(self, index: int) -> tuple[Episode, dict[str, np.ndarray]]:
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode index {index} out of range [0, {self.num_episodes})")
        return self._load(int(index))

    def episode(self, index: int) -> Episode:
        return self[index][0]

    @functools.lru_cache(maxsize=64)  # noqa: B019 - per-instance cache is intended
    def _load(self, index: int):
        from interaction_jax.data import tasks
        from interaction_jax.features.mel import FeatureParams, log_mel

        ep = tasks.generate(self.task, self.seed + index, duration_s=self.duration_s)
        params = FeatureParams.from_config(self.feature_config) if self.feature_config else FeatureParams()
        extras = {"user_logmel": log_mel(ep.user_audio, params), "model_logmel": log_mel(ep.model_audio, params)}
        return ep, extras


def open_source(config, *, split: str = "train"):
    """The episode source a config names: `data.data_dir` (prepared store) or synthetic episodes."""
    d = config.data
    path = d.data_dir if split == "train" else d.eval_data_dir
    if path:
        from interaction_jax.data.store import open_store

        # with "skip", an unreadable shard is reported and its records skipped, not a failed run
        return open_store(path, allow_damaged=d.get("on_corrupt_record", "skip") == "skip")
    if split == "train":
        return SyntheticSource(d.task, d.num_episodes, d.seed, d.episode_seconds, config.features)
    return SyntheticSource(d.task, d.eval_num_episodes, d.eval_seed, d.episode_seconds, config.features)
