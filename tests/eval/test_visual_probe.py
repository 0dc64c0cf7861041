"""experiments/visual_proactivity/probe.py: rows are valid one-change configs; the analysis by hand."""

from __future__ import annotations

import pytest
from conftest import REPO, load_script

from interaction_jax.config_lib import load_config
from interaction_jax.data import tasks

HERE = REPO / "experiments" / "visual_proactivity"


@pytest.fixture(scope="module")
def probe():
    return load_script(HERE / "probe.py", "visual_probe")


def test_rows_load_and_name_real_tasks(probe):
    for name, (_, task, overrides, scene) in probe.ROWS.items():
        assert task in tasks.TASKS and scene in ("default", "clean"), name
        c = load_config(str(HERE / "config.py"), overrides)
        assert c.layout.video_patches == 4
    assert load_config(str(HERE / "config.py"), probe.ROWS["delta"][2]).layout.video_delta


def _example(event, words, expected="go"):
    return {"system": "model", "task": "visual_cue",
            "windows": [{"kind": "silent", "start": 1.0, "end": event}, {"kind": "speak", "start": event,
                                                                          "end": event + 1.2, "expected": expected}],
            "output": {"words": [{"text": w, "start": t, "end": t + 0.1} for w, t in words]}}


def test_analysis_by_hand(probe):
    rows = [_example(4.0, [("go", 4.4)]), _example(6.0, [("now", 6.5), ("go", 7.0)]), _example(8.0, [("Go.", 8.2)]),
            _example(5.0, []), {"system": "cascade", "task": "visual_cue", "windows": [], "output": {"words": []}}]
    a = probe.analyse({"examples": {"visual": rows}})
    assert a["visual_cue_episodes"] == 4 and a["episodes_with_speech"] == 3
    assert a["first_word_is_instructed_word_rate"] == pytest.approx(2 / 3)
    assert a["first_word_minus_event_s"]["median"] == pytest.approx(0.4)
    assert a["event_time_s"] == {"median": 6.0, "min": 4.0, "max": 8.0}
    assert a["corr_event_vs_first_word"] > 0.99  # first words 4.4, 6.5, 8.2 follow the events 4, 6, 8
