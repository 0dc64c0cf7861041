"""experiments/delegation/run.py grading on a hand-built episode: every metric against values worked out by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import REPO, load_script

from interaction_jax.data.episode import GradingWindow, Word

RUN = REPO / "experiments" / "delegation" / "run.py"


@pytest.fixture(scope="module")
def run_module():
    """The script's grading functions (importing it defines no absl flags)."""
    return load_script(RUN, "delegation_run")


def _episode():
    return SimpleNamespace(
        episode_id="e0",
        grading=[GradingWindow("delegate", 1.5, 3.0, "what is 12 times 34"),
                 GradingWindow("no_delegate", 6.0, 9.0, "")],
        metadata={"variant": "delegate", "answer_time": 5.0, "result_time": 4.5},
    )


def _job(time, request, result, result_time, status="done"):
    return SimpleNamespace(time=time, request=request, job_id=1, status=status, result=result, result_time=result_time)


def test_grade_and_summarise_by_hand(run_module):
    words = [Word("One", 2.0, 2.2), Word("moment.", 2.2, 2.6),  # while the job runs
             Word("The", 4.9, 5.0), Word("answer", 5.0, 5.3), Word("is", 5.3, 5.4), Word("408.", 5.4, 5.8)]
    log = [_job(1.8, "What is 12 times 34?", "408", 4.5), _job(6.5, "what is", None, None, status="error")]
    rec = run_module.grade_episode(_episode(), log, words)
    assert rec["delegate_hits"] == 1 and rec["false_alarms"] == 1  # second request falls in no_delegate
    assert rec["exact_match"] == [True]  # case and punctuation free
    assert rec["result_to_speech_s"] == [pytest.approx(0.4)]  # arrival 4.5 -> "The" at 4.9
    assert rec["result_words_delay_s"] == [pytest.approx(0.9)]  # arrival 4.5 -> "408." at 5.4
    assert rec["result_spoken"] == [True] and rec["talked_while_waiting"] == [True]
    s = run_module.summarise([rec])
    assert s["recall"] == 1.0 and s["precision"] == 0.5 and s["false_alarm_rate"] == 1.0
    assert s["talked_while_waiting_rate"] == 1.0 and s["result_to_result_words_s"]["median"] == pytest.approx(0.9)


def test_silent_wait_and_unspoken_result(run_module):
    words = [Word("The", 4.9, 5.0), Word("answer", 5.0, 5.3), Word("is", 5.3, 5.4), Word("407.", 5.4, 5.8)]
    rec = run_module.grade_episode(_episode(), [_job(2.9, "what is 12 times 34", "408", 4.5)], words)
    assert rec["talked_while_waiting"] == [False]  # nothing said between 2.9 and 4.5
    assert rec["result_spoken"] == [False] and rec["result_words_delay_s"] == [None]
    assert rec["result_to_speech_s"] == [pytest.approx(0.4)]


def test_timeline_plot_is_written(run_module, tmp_path):
    from interaction_jax.data.episode import TextEvent

    ep = _episode()
    ep.user_words, ep.user_text, ep.duration = [], [TextEvent("What is 12 times 34?", 0.3)], 8.0
    ep.model_words = [Word("One", 2.0, 2.2), Word("408.", 5.4, 5.8)]
    rec = run_module.grade_episode(ep, [_job(1.8, "what is 12 times 34", "408", 4.5)], ep.model_words)
    path = run_module.plot_timeline(str(tmp_path / "t.png"), ep, rec)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
