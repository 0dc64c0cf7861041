"""experiments/interaction_small/report.py: headline metrics, targets and the selection score, checked by hand."""

from __future__ import annotations

import pytest
from conftest import REPO, load_script

REPORT = REPO / "experiments" / "interaction_small" / "report.py"


@pytest.fixture(scope="module")
def report():
    return load_script(REPORT, "interaction_small_report")


METRICS = {
    "timespeak": {"accuracy": 0.9},
    "cuespeak": {"accuracy": 0.5, "false_alarm_rate": 0.2},
    "fd": {"interruption_stop_rate": 1.0, "interruption_stop_latency_median_s": 0.3,
           "interruption_speaking_at_onset": 8, "interruption_examples": 10, "backchannel_false_stop_rate": 0.0,
           "talking_to_others_false_response_rate": 0.1, "background_speech_false_response_rate": 0.0,
           "turn_taking_takeover_rate": 0.95, "turn_taking_latency_median_s": 0.5,
           "turn_taking_answer_accuracy": 0.4},
    "delegation": {"delegation_precision": 0.5, "delegation_recall": 0.6, "request_exact_match": 0.7},
}
LIVE = {"precision": 1.0, "recall": 0.9, "request_exact_match": 0.8, "computed_result_spoken_rate": 0.75}


def test_headline_takes_delegation_from_the_live_hub_when_given(report):
    h = report.headline(METRICS, LIVE)
    assert h["interruption_speaking_at_onset_rate"] == pytest.approx(0.8)
    assert (h["delegation_precision"], h["delegation_recall"], h["delegation_result_spoken"]) == (1.0, 0.9, 0.75)
    scripted = report.headline(METRICS, None)
    assert (scripted["delegation_precision"], scripted["delegation_result_spoken"]) == (0.5, None)


def test_targets_and_selection_score_by_hand(report):
    h = report.headline(METRICS, LIVE)
    verdict = {k: report.met(h[k], t, d) for k, _, t, d in report.TARGETS}
    assert verdict["timespeak_accuracy"] and not verdict["cuespeak_accuracy"]
    assert not verdict["cuespeak_false_alarm_rate"]  # 0.2 > 0.10
    assert verdict["interruption_stop_latency_s"] and not verdict["turn_taking_latency_s"]  # 0.3 <= 0.4; 0.5 > 0.4
    assert verdict["talking_to_others_false_response_rate"]  # 0.1 <= 0.10 (bound included)
    # rates oriented so that higher is better; latencies are not part of the score
    rates = [0.9, 0.5, 1 - 0.2, 1.0, 0.8, 1 - 0.0, 1 - 0.1, 1 - 0.0, 0.95, 0.4, 1.0, 0.9, 0.8, 0.75]
    assert report.selection_score(h) == pytest.approx(sum(rates) / len(rates))
    assert report.met(None, 0.5, ">=") is None
