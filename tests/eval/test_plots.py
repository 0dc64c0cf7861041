"""Timeline plots from an evaluation's results (the path `--plot` and the experiment report take)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from interaction_jax.data import tasks
from interaction_jax.data.episode import Word
from interaction_jax.eval import benchmarks as bm
from interaction_jax.eval.grading import ground_truth_run
from interaction_jax.eval.plots import plot_best_worst, run_from_json
from interaction_jax.eval.runner import EpisodeRun


@pytest.fixture(scope="module")
def results():
    """A results dict shaped like evaluate's: targets as 'oracle', a late copy as 'model'."""
    eps = [tasks.generate("timespeak", 2_000_000 + i, duration_s=8.0) for i in range(3)]
    oracle = [ground_truth_run(e) for e in eps]
    late = [EpisodeRun(r.episode_id, r.task, r.duration, [Word(w.text, w.start + 1.5 * i, w.end + 1.5 * i)
                                                          for w in r.words], events=r.events, system="model")
            for i, r in enumerate(oracle)]  # episode 0 on time, the others late
    res = {"metrics": {}, "examples": {"timespeak": []}, "episode_seconds": 8.0}
    for name, runs in (("model", late), ("oracle", oracle)):
        items = bm.graded(eps, runs)
        res["metrics"][name] = {"timespeak": bm.score_items("timespeak", items)}
        res["examples"]["timespeak"] += [
            {"system": name, "episode_id": ep.episode_id, "score": np.mean([r.passed for _, r in wr]),
             "windows": [r.to_json() for _, r in wr], "output": run.to_json()} for ep, run, wr in items]
    return json.loads(json.dumps(res, default=float)), eps


def test_best_and_worst_examples_are_drawn(results, tmp_path):
    res, eps = results
    paths = plot_best_worst(res, str(tmp_path))  # episodes re-rendered from the seeds in their ids
    names = sorted(p.rsplit("/", 1)[1] for p in paths)
    late_ids = {e.episode_id for e in eps[1:]}
    assert len(names) == 3 and names[1] == "timespeak_timing_errors.png"
    assert names[0] == "timespeak_best_timespeak-2000000.png"  # the on-time episode scores highest
    assert names[2].removeprefix("timespeak_worst_").removesuffix(".png") in late_ids
    for p in paths:
        w, h = Image.open(p).size
        assert w > 300 and h > 100


def test_run_from_json_round_trips(results):
    res, eps = results
    row = res["examples"]["timespeak"][0]
    run = run_from_json(row["output"], eps[0])
    assert run.system == "model" and [w.text for w in run.words] == [w["text"] for w in row["output"]["words"]]
