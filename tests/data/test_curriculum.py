"""data.curriculum: phase parsing and its errors, the phases followed element by element (task
shares, each task's episodes once per epoch), the training pipeline resuming mid-curriculum, and
the task of each stored episode known without reading it (checked against the episodes read)."""

import grain
import numpy as np
import pytest

from interaction_jax.config_lib import ConfigError, validate_config
from interaction_jax.data.curriculum import CurriculumError, Phase, curriculum_dataset, episode_tasks, parse_curriculum
from interaction_jax.data.episode import Episode, TextEvent, Word
from interaction_jax.data.pipeline import make_iterator

SR = 16000


def test_parse_curriculum_phases_and_errors():
    phases = parse_curriculum("0:timespeak=3,others=1; 200:delegation_typed=1")
    assert [p.start_step for p in phases] == [0, 200]
    assert phases[0].tasks == ("timespeak", "others") and phases[0].weights == pytest.approx((0.75, 0.25))
    assert parse_curriculum("") == []
    assert parse_curriculum("0:all;10:others=1")[0].tasks == ("all",)
    for bad, says in [("5:timespeak=1", "first phase must start at step 0"),
                      ("0:timespeak=1;0:others=1", "must increase"),
                      ("0:timespeak=1;x:others=1", "not an integer"),
                      ("0:nosuchtask=1", "unknown task 'nosuchtask'"),
                      ("0", "must be 'STEP:task=weight")]:
        with pytest.raises(CurriculumError, match=says):
            parse_curriculum(bad)


def test_config_rejects_a_phase_that_never_runs(tiny_config):
    c = tiny_config.copy_and_resolve_references()
    c.data.curriculum = f"0:timespeak=1;{int(c.train.num_steps)}:others=1"
    with pytest.raises(ConfigError, match="would never run"):
        validate_config(c)


def _tasks(n):
    return ["a" if i % 4 else "b" for i in range(n)]  # 3 a : 1 b in the data


def test_phases_follow_the_element_index():
    n, per_step = 40, 4
    ds = grain.MapDataset.source(list(range(n)))
    phases = [Phase(0, ("a",), (1.0,)), Phase(10, ("a", "b"), (0.25, 0.75))]
    cur = curriculum_dataset(ds, _tasks(n), phases, seed=0, elements_per_step=per_step)
    first = [cur[i] for i in range(10 * per_step)]
    assert all(_tasks(n)[e] == "a" for e in first)  # phase 0 draws only task a
    a_idx = [i for i in range(n) if _tasks(n)[i] == "a"]
    assert sorted(first[: len(a_idx)]) == a_idx  # every a episode once in its first epoch
    second = [cur[10 * per_step + i] for i in range(400)]
    share_b = np.mean([_tasks(n)[e] == "b" for e in second])
    assert share_b == pytest.approx(0.75, abs=0.02)  # b is a quarter of the data, three quarters here
    b_idx = [i for i in range(n) if _tasks(n)[i] == "b"]
    assert sorted([e for e in second if _tasks(n)[e] == "b"][: len(b_idx)]) == b_idx


def test_a_phase_naming_a_task_the_data_lacks_says_what_it_holds():
    ds = grain.MapDataset.source(list(range(8)))
    phases = [parse_curriculum("0:timespeak=1")[0]]
    with pytest.raises(CurriculumError, match=r"holds no episode of it; it holds: a \(6\), b \(2\)"):
        curriculum_dataset(ds, _tasks(8), phases, seed=0, elements_per_step=2)


class TaskedToySource:
    """Cheap episodes (no TTS) whose tasks alternate others / timespeak, known without reading;
    an "others" episode lasts 1 s, a "timespeak" one 0.4 s, so a 1 s window shows which it is."""

    def __init__(self, n=8):
        self.n = n

    def __len__(self):
        return self.n

    def episode_tasks(self):
        return ["timespeak" if i % 2 else "others" for i in range(self.n)]

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        duration = 0.4 if self.episode_tasks()[i] == "timespeak" else 1.0
        n = int(duration * SR)
        return Episode(f"toy{i}", duration, user_audio=(0.05 * rng.standard_normal(n)).astype(np.float32),
                       model_audio=(0.05 * rng.standard_normal(n)).astype(np.float32),
                       model_words=[Word(f"w{i}", 0.1, 0.3)], user_text=[TextEvent(f"hi {i}", 0.1)],
                       task=self.episode_tasks()[i])


def test_training_iterator_follows_the_curriculum_and_resumes(tiny_config):
    c = tiny_config.copy_and_resolve_references()
    c.data.curriculum = "0:others=1;2:timespeak=1"
    kw = dict(batch_size=2, num_turns=5, process_index=0, process_count=1, worker_count=0)
    src = TaskedToySource(n=8)
    it = make_iterator(c, src, **kw)
    batches = [next(it) for _ in range(3)]
    state = it.get_state()
    after = next(it)
    # share of each window inside its episode: 1.0 for "others" (steps 0, 1), 0.4 for "timespeak"
    inside = [np.round(b["valid"].mean(axis=1), 2).tolist() for b in (*batches, after)]
    assert inside == [[1.0, 1.0], [1.0, 1.0], [0.4, 0.4], [0.4, 0.4]], inside
    resumed = make_iterator(c, src, **kw)
    resumed.set_state(state)
    again = next(resumed)
    for k in after:
        np.testing.assert_array_equal(after[k], again[k], err_msg=k)
    plain = c.copy_and_resolve_references()
    plain.data.curriculum = ""
    mixed = [np.round(next(it_p)["valid"].mean(axis=1), 2) for it_p in [make_iterator(plain, src, **kw)] * 4]
    assert {0.4, 1.0} <= set(np.concatenate(mixed).tolist())  # without it, both tasks from step 0


def test_stored_episode_tasks_match_the_episodes(tmp_path):
    from interaction_jax.data.prepare import prepare
    from interaction_jax.data.store import open_store

    spec = "mix:timespeak=1,others=1,turntaking=1"
    path = prepare(str(tmp_path / "store"), task=spec, num_episodes=6, seed=11, episode_seconds=3.0)
    store = open_store(path)
    assert episode_tasks(store) == [store.episode(i).task for i in range(len(store))]
    assert len(set(episode_tasks(store))) > 1


def test_an_all_phase_reads_exactly_what_the_plain_pipeline_reads(tiny_config):
    """"0:all;2:timespeak=1": the first two steps are the plain run's batches, bitwise."""
    c = tiny_config.copy_and_resolve_references()
    kw = dict(batch_size=2, num_turns=5, process_index=0, process_count=1, worker_count=0)
    src = TaskedToySource(n=8)
    plain = make_iterator(c, src, **kw)
    c.data.curriculum = "0:all;2:timespeak=1"
    cur = make_iterator(c, src, **kw)
    for _ in range(2):
        a, b = next(plain), next(cur)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert np.round(next(cur)["valid"].mean(axis=1), 2).tolist() == [0.4, 0.4]  # then timespeak only
