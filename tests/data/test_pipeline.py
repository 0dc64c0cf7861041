"""Grain pipeline: static batches, determinism, process sharding, checkpointed iterator state."""

import numpy as np
import pytest

from interaction_jax.data.episode import Episode, TextEvent, Word
from interaction_jax.data.pipeline import make_dataset, make_iterator
from interaction_jax.streams.layout import Kind, StreamLayout

SR = 16000


class ToySource:
    """Cheap random-access episodes (no TTS) so these tests stay fast."""

    def __init__(self, n=6, duration=2.0):
        self.n, self.duration = n, duration

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        n = int(self.duration * SR)
        return Episode(
            f"toy{i}",
            self.duration,
            user_audio=(0.05 * rng.standard_normal(n)).astype(np.float32),
            model_audio=(0.05 * rng.standard_normal(n)).astype(np.float32),
            model_words=[Word(f"w{i}", 0.5, 0.8)],
            user_text=[TextEvent(f"hi {i}", 0.1)],
            task="toy",
        )


def _take(it, k):
    return [next(it) for _ in range(k)]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batches_have_the_layout_shapes(tiny_config):
    it = make_iterator(tiny_config, ToySource(), batch_size=3, num_turns=5, process_index=0, process_count=1)
    batch = next(it)
    spec = StreamLayout.from_config(tiny_config).packed_spec(5)
    for k, (shape, dtype) in spec.items():
        assert batch[k].shape == (3, *shape) and batch[k].dtype == dtype, k


def test_pipeline_is_deterministic_given_the_seed(tiny_config):
    kw = dict(batch_size=2, num_turns=4, process_index=0, process_count=1)
    a = _take(make_iterator(tiny_config, ToySource(), **kw), 4)
    b = _take(make_iterator(tiny_config, ToySource(), **kw), 4)
    for x, y in zip(a, b):
        _assert_same(x, y)
    c = _take(make_iterator(tiny_config, ToySource(), seed=123, **kw), 4)
    assert any(not np.array_equal(x["micro_turn"], y["micro_turn"]) for x, y in zip(a, c))


def test_processes_read_disjoint_shards(tiny_config):
    src = ToySource(n=6)
    seen = []
    for pi in range(2):
        ds = make_dataset(tiny_config, src, batch_size=1, num_turns=10, process_index=pi, process_count=2, num_epochs=1)
        ids = set()
        slot = StreamLayout.from_config(tiny_config).block_slice(Kind.USER_TEXT).start + 3  # the digit in "hi i"
        for i in range(len(ds)):
            ids.add(int(ds[i]["token_ids"][0, slot]))
        seen.append(ids)
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 6


def test_iterator_state_round_trips_through_orbax(tiny_config, tmp_path):
    import jax.numpy as jnp

    from interaction_jax.train import checkpoint as ckpt

    kw = dict(batch_size=2, num_turns=4, process_index=0, process_count=1)
    it = make_iterator(tiny_config, ToySource(), **kw)
    _take(it, 3)
    mgr = ckpt.make_manager(str(tmp_path / "ckpt"), tiny_config.train)
    ckpt.save(mgr, 3, {"w": jnp.ones(2)}, it, force=True)
    mgr.wait_until_finished()
    expected = _take(it, 3)

    fresh = make_iterator(tiny_config, ToySource(), **kw)
    state, step = ckpt.restore(mgr, ckpt.abstract_like({"w": jnp.ones(2)}), fresh)
    assert step == 3
    for x, y in zip(expected, _take(fresh, 3)):
        _assert_same(x, y)
    mgr.close()


def test_empty_source_and_bad_batch_split_fail_clearly(tiny_config):
    with pytest.raises(ValueError, match="empty"):
        make_dataset(tiny_config, ToySource(n=0), process_index=0, process_count=1)
    with pytest.raises(ValueError, match="divide"):
        make_dataset(tiny_config, ToySource(), process_index=0, process_count=3)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(tiny_config):
    kw = dict(batch_size=2, num_turns=4, process_index=0, process_count=1)
    a = _take(make_iterator(tiny_config, ToySource(), worker_count=0, **kw), 4)
    b = _take(make_iterator(tiny_config, ToySource(), worker_count=2, **kw), 4)
    for x, y in zip(a, b):
        _assert_same(x, y)


def test_start_at_zero_prob_pins_windows_to_the_episode_start(tiny_config):
    from interaction_jax.data.pipeline import RandomWindow
    from interaction_jax.streams import pack
    from interaction_jax.streams.tokenizer import make_tokenizer

    layout = StreamLayout.from_config(tiny_config)
    ep = Episode("e", duration=8.0, user_words=[Word("hi", 1.0, 1.3)])
    grid = pack.EpisodeGrid.from_episode(ep, layout, make_tokenizer(tiny_config.text))
    firsts = {p: [] for p in (0.0, 1.0)}
    for p in firsts:
        rw = RandomWindow(10, p)
        for i in range(20):
            firsts[p].append(int(rw.random_map(grid, np.random.default_rng(i))["micro_turn"][0]))
    assert firsts[1.0] == [0] * 20
    assert len(set(firsts[0.0])) > 3 and max(firsts[0.0]) <= grid.num_turns - 10  # uniform starts, in range
