"""The Grain input pipeline: episodes -> random windows of W micro-turns -> packed static batches.

    MapDataset(SkipCorrupt(source))    random access to episodes (a prepared store or synthetic);
                                       corrupt records skipped or stopped on (data/corrupt.py)
      .slice(process_index::count)     each host reads a disjoint shard
      .shuffle(seed).repeat()          reshuffled every epoch (or data.curriculum's phases:
                                       task weights that change at given steps, curriculum.py)
      .map(ToGrid)                     features + text streams on the micro-turn grid
      .random_map(RandomWindow)        a window start per element, from a per-index RNG
      .batch(B, drop_remainder=True)   static shapes
      .to_iter_dataset()[.mp_prefetch] worker processes if data.worker_count > 0
      .map(report skips)               in the main process: corrupt records skipped in any worker
                                       are warned about, counted and limited here

Everything is a deterministic function of (seed, element index), so the iterator state is one
integer; it is saved with the model checkpoint (`grain.checkpoint.CheckpointSave`) and a
resumed run sees exactly the same batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from interaction_jax.data.corrupt import SkipCorrupt, Skips
from interaction_jax.data.curriculum import CurriculumError, curriculum_dataset, episode_tasks, parse_curriculum
from interaction_jax.data.episode import Episode
from interaction_jax.streams.layout import StreamLayout
from interaction_jax.streams.pack import EpisodeGrid, pack_window
from interaction_jax.streams.tokenizer import make_tokenizer


def _split_record(record: Any) -> tuple[Episode, dict]:
    if isinstance(record, Episode):
        return record, {}
    if isinstance(record, tuple) and len(record) == 2 and isinstance(record[0], Episode):
        return record[0], dict(record[1] or {})
    raise TypeError(f"data source returned {type(record).__name__}; expected Episode or (Episode, extras)")


@dataclasses.dataclass
class ToGrid(grain.transforms.Map):
    """Episode (+ optional precomputed log-mels in extras) -> EpisodeGrid."""

    layout: StreamLayout
    text_config: Any
    feature_config: Any
    user_speech_timing: str = "next_turn"  # model.user_speech_timing (text_streams.user_speech_tokens)

    @classmethod
    def from_config(cls, config, layout: StreamLayout) -> ToGrid:
        """The grid transform a config trains on (its text, features and transcript timing)."""
        return cls(layout, config.text, config.features, str(config.model.get("user_speech_timing", "next_turn")))

    def map(self, record):
        from interaction_jax.features.mel import FeatureParams

        episode, extras = _split_record(record)
        um, mm = extras.get("user_logmel"), extras.get("model_logmel")
        return EpisodeGrid.from_episode(
            episode,
            self.layout,
            make_tokenizer(self.text_config),
            FeatureParams.from_config(self.feature_config),
            user_logmel=None if um is None else np.asarray(um, np.float32),
            model_logmel=None if mm is None else np.asarray(mm, np.float32),
            user_speech_timing=self.user_speech_timing,
        )


@dataclasses.dataclass
class RandomWindow(grain.transforms.RandomMap):
    """Packs a window of `num_turns` micro-turns at a random start (short episodes are padded).

    With probability `start_at_zero_prob` the window starts at the episode's first micro-turn.
    Positions restart at 0 in every window, so a window cut mid-episode looks to the model like
    the start of a session in which it may already be speaking; a live session always starts at
    the true beginning. Raising this probability (or using whole-episode windows) removes that
    mismatch at the cost of seeing late parts of long episodes less often.
    """

    num_turns: int
    start_at_zero_prob: float = 0.0

    def random_map(self, grid: EpisodeGrid, rng: np.random.Generator) -> dict[str, np.ndarray]:
        last_start = max(0, grid.num_turns - self.num_turns)
        k = grid.layout.video_every if not grid.layout.uniform else 1  # sparse video: starts on its grid
        start = k * int(rng.integers(0, last_start // k + 1))
        if self.start_at_zero_prob > 0 and rng.random() < self.start_at_zero_prob:
            start = 0
        return pack_window(grid, start, self.num_turns)


SKIPS_KEY = "_corrupt_skips"  # make_iterator's carried skips (one `Skips` per element); never in its output


class _Reads:
    """Random access yielding (record, Skips): reads without reporting, for `_ReportSkips` to report."""

    def __init__(self, source: SkipCorrupt):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Any, Skips]:
        return self.source.read(index, report=False)


@dataclasses.dataclass
class _OnRecord(grain.transforms.Map):
    """`inner` applied to the record of a (record, Skips) pair; the skips ride along."""

    inner: grain.transforms.Map

    def map(self, pair):
        return self.inner.map(pair[0]), pair[1]


@dataclasses.dataclass
class _WindowCarrying(grain.transforms.RandomMap):
    """`inner`'s window of the grid, with the element's Skips under SKIPS_KEY (the same RNG draws)."""

    inner: RandomWindow

    def random_map(self, pair, rng: np.random.Generator) -> dict[str, Any]:
        return {**self.inner.random_map(pair[0], rng), SKIPS_KEY: pair[1]}


@dataclasses.dataclass
class _ReportSkips(grain.transforms.Map):
    """Main process: pops each batch's carried skips and reports them to the one count."""

    source: SkipCorrupt

    def map(self, batch: dict) -> dict:
        batch = dict(batch)
        for skips in np.asarray(batch.pop(SKIPS_KEY)).ravel():
            if skips.records:
                self.source.report(skips)
        return batch


def make_dataset(
    config,
    source,
    *,
    seed: int | None = None,
    batch_size: int | None = None,
    num_turns: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
    carry_skips: bool = False,
    curriculum: bool = True,
) -> grain.MapDataset:
    """The map-style pipeline (before batching workers); `make_iterator` wraps it.

    Corrupt records are reported where they are read, unless `carry_skips`: then each batch
    carries them under SKIPS_KEY for the consuming process to report (`make_iterator`).
    `data.curriculum` (data/curriculum.py) replaces the epoch shuffle with its phases unless
    `curriculum=False` (held-out data is read as it is)."""
    import jax

    if len(source) == 0:
        raise ValueError("data source is empty: prepare a data set or raise data.num_episodes")
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    seed = int(config.data.seed if seed is None else seed)
    bs = int(config.data.batch_size if batch_size is None else batch_size)
    w = int(config.data.window_micro_turns if num_turns is None else num_turns)
    if bs % pc and batch_size is None:
        raise ValueError(f"data.batch_size={bs} is the global batch; it must divide by {pc} processes")
    per_host = bs // pc if batch_size is None else bs
    layout = StreamLayout.from_config(config)
    skip = SkipCorrupt.from_config(config, source)
    ds = grain.MapDataset.source(_Reads(skip) if carry_skips else skip)
    if pc > 1:
        ds = ds.slice(slice(pi, None, pc))
    if len(ds) == 0:
        raise ValueError(f"process {pi} of {pc} got no episodes; use at least {pc} episodes")
    phases = parse_curriculum(str(config.data.get("curriculum", ""))) if curriculum else []
    if phases:
        if num_epochs is not None:
            raise ValueError("data.curriculum draws an endless stream; it cannot run a fixed number of epochs")
        tasks_of = episode_tasks(source)
        if tasks_of is None:
            raise CurriculumError("data.curriculum needs the task of every episode: a synthetic data set "
                                  "(prepared or generated), not a corpus store")
        ds = curriculum_dataset(ds, tasks_of[pi::pc], phases, seed=seed,
                                elements_per_step=per_host)
    else:
        ds = ds.shuffle(seed=seed).repeat(num_epochs)
    to_grid = ToGrid.from_config(config, layout)
    window = RandomWindow(w, float(config.data.start_at_zero_prob))
    ds = ds.map(_OnRecord(to_grid) if carry_skips else to_grid)
    ds = ds.random_map(_WindowCarrying(window) if carry_skips else window, seed=seed + 7919 * (pi + 1))
    return ds.batch(per_host, drop_remainder=True)


def make_iterator(config, source, *, worker_count: int | None = None, **kwargs) -> grain.DatasetIterator:
    """A checkpointable iterator of batches (`get_state()` / `set_state()`).

    Corrupt records skipped in worker processes are counted in this process's `SkipCorrupt`
    (the one `source` is, or a new one), as the batches made from them arrive."""
    # Grain's default read-ahead (16 threads, 500 elements) front-loads minutes of work on a
    # small CPU; read a few batches ahead instead.
    threads = int(getattr(config.data, "read_threads", 2))
    prefetch = int(getattr(config.data, "prefetch_batches", 2))
    read = grain.ReadOptions(num_threads=max(threads, 1), prefetch_buffer_size=max(prefetch, 1))
    skip = SkipCorrupt.from_config(config, source)
    ds = make_dataset(config, skip, carry_skips=True, **kwargs).to_iter_dataset(read)
    workers = int(config.data.worker_count if worker_count is None else worker_count)
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain's worker pool reads absl flags (library use, tests)
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(ds.map(_ReportSkips(skip)))
