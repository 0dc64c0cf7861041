"""The visual benchmark: grading of hand-built outputs, the honest cascade, and one live run end to end."""

from __future__ import annotations

import json

import pytest

from interaction_jax.data import tasks
from interaction_jax.data.episode import Word
from interaction_jax.eval import benchmarks as bm
from interaction_jax.eval.baseline import run_baseline
from interaction_jax.eval.episodes import eval_seed
from interaction_jax.eval.runner import EpisodeRun

DUR = 8.0
_CACHE: dict = {}
_MASKS: dict = {}


def episode(task, seed):
    if (task, seed) not in _CACHE:
        _CACHE[task, seed] = tasks.generate(task, seed, duration_s=DUR)
    return _CACHE[task, seed]


def find(task, pred):
    return next(episode(task, s) for s in range(40) if pred(episode(task, s)))


def run(ep, said: list[tuple[str, float]]) -> EpisodeRun:
    words = [Word(tok, t + 0.3 * i, t + 0.3 * (i + 1)) for text, t in said for i, tok in enumerate(text.split())]
    return EpisodeRun(ep.episode_id, ep.task, ep.duration, sorted(words, key=lambda w: w.start))


def score(ep, said):
    if ep.episode_id not in _MASKS:  # the targets' own pass/fail per window, packed once per episode
        _MASKS.update(bm.gradable([ep]))
    return bm.score_items("visual", bm.graded([ep], [run(ep, said)], _MASKS))


def test_visual_cue_right_word_in_window_passes_early_late_absent_fail():
    ep = find("visual_cue", lambda e: len(e.metadata["lookalikes"]) >= 1 and e.metadata["visual_events"][0]["time"]
              + 1.5 < DUR)
    event = ep.metadata["visual_events"][0]["time"]
    word = ep.metadata["word"]
    assert score(ep, [(word, event + 0.3)])["visual_cue_accuracy"] == 1.0
    early = score(ep, [(word, event - 0.3)])
    assert early["visual_cue_accuracy"] == 0.0 and early["visual_cue_early_rate"] > 0
    assert score(ep, [(word, event + 1.4)])["visual_cue_accuracy"] == 0.0  # late
    assert score(ep, [])["visual_cue_accuracy"] == 0.0  # absent
    assert score(ep, [("banana", event + 0.3)])["visual_cue_accuracy"] == 0.0  # wrong word
    la = ep.metadata["lookalikes"][0]
    fooled = score(ep, [(word, la + 0.3), (word, event + 0.3)])
    assert fooled["visual_cue_accuracy"] == 0.0 and fooled["visual_cue_lookalike_false_alarm_rate"] > 0
    assert score(ep, [(word, event + 0.3)])["visual_cue_lookalike_false_alarm_rate"] == 0.0


def test_repcount_every_count_in_its_window_never_early():
    ep = find("repcount", lambda e: e.metadata["reps"] >= 3)
    times = ep.metadata["rep_times"]
    words = [w.expected for w in ep.grading if w.kind == "speak"]
    good = [(w, t + 0.25) for w, t in zip(words, times)]
    m = score(ep, good)
    assert m["repcount_accuracy"] == 1.0 and m["repcount_count_hit_rate"] == 1.0
    assert m["repcount_timing_error_median_s"] == pytest.approx(0.25)
    early = [*good[:1], (words[1], times[1] - 0.5), *good[2:]]  # count two said before rep two completes
    m = score(ep, early)
    assert m["repcount_accuracy"] == 0.0 and m["repcount_count_hit_rate"] < 1.0
    assert score(ep, good[:-1])["repcount_accuracy"] == 0.0  # a missing count
    assert score(ep, [*good, ("nine", times[-1] + 1.5)])["repcount_accuracy"] == 0.0  # counting on after the last


def test_visual_qa_answer_after_visible_not_before_and_negatives():
    ep = find("visual_qa", lambda e: e.metadata["variant"] == "asked_before")
    t = next(w.start for w in ep.grading if w.kind == "speak")
    answer = ep.metadata["answer"]
    assert score(ep, [(answer, t + 0.3)])["visual_qa_accuracy"] == 1.0
    too_soon = score(ep, [(answer, t - 0.6), (answer, t + 0.3)])
    assert too_soon["visual_qa_accuracy"] == 0.0 and too_soon["visual_qa_before_visible_rate"] == 1.0
    wrong = answer.split()[0] + (" circle" if "circle" not in answer else " square")
    assert score(ep, [(wrong, t + 0.3)])["visual_qa_accuracy"] == 0.0
    neg = episode("visual_negative", 0)
    assert score(neg, [])["visual_negative_false_alarm_rate"] == 0.0
    assert score(neg, [("now", 3.0)])["visual_negative_false_alarm_rate"] == 1.0


def test_cascade_never_answers_a_visual_event_it_has_not_seen():
    cue = [tasks.generate("visual_cue_typed", eval_seed("visual_cue", i), duration_s=DUR) for i in range(3)]
    reps = [tasks.generate("repcount_typed", eval_seed("repcount", i), duration_s=DUR) for i in range(3)]
    qa = [find("visual_qa", lambda e: e.metadata["variant"] == "asked_after" and e.metadata["instruction_mode"]
               == "typed")]
    eps = cue + reps + qa
    m = bm.score_items("visual", bm.graded(eps, run_baseline(eps, vad="energy")))
    assert m["visual_cue_hit_rate"] == 0.0 and m["repcount_count_hit_rate"] == 0.0
    assert m["visual_cue_early_rate"] == 0.0  # it does not say the cue's answer at the instruction's end either
    assert m["visual_qa_answer_rate"] == 1.0  # a question about what is visible now it can answer at the turn end


@pytest.mark.slow  # compiles the tiny engine (shapes shared with tests/eval/test_evaluate.py through slots=2)
def test_visual_benchmark_end_to_end_random_tiny(tiny_config, tmp_path):
    from interaction_jax.evaluate import evaluate

    evaluate(tiny_config, workdir=None, init="random", benchmarks=["visual"], num_examples=1, out_dir=str(tmp_path),
             baseline=True, oracle=True, plot=True, slots=2, episode_seconds=6.0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["metrics"]) == {"model", "turn-based baseline", "oracle (targets)"}
    oracle = saved["metrics"]["oracle (targets)"]["visual"]
    assert oracle["visual_negative_false_alarm_rate"] == 0.0
    for key in ("visual_cue_accuracy", "repcount_accuracy", "visual_qa_accuracy"):
        assert oracle[key] in (1.0, None)  # None: a 6 s episode may clip its only event
    rows = [r for r in saved["examples"]["visual"] if r["system"] == "model"]
    assert sorted(r["task"] for r in rows) == sorted(tasks.VISUAL_TASKS)
    assert "Visual cue accuracy" in saved["table"]
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert any(n.startswith("visual_visual_cue_") for n in pngs) and "visual_timing_errors.png" in pngs
