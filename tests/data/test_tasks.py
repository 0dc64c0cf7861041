"""Synthetic tasks: determinism, well-formed episodes, causal model timing, task-specific behaviour."""

import numpy as np
import pytest

from interaction_jax.data.speech import SpeechRenderer, default_renderer
from interaction_jax.data.tasks import TASK_NAMES, answer_request, generate, mix_task

SEEDS = (0, 1, 2, 3)
LAT = 0.2 - 1e-6  # the response-latency floor
KINDS = {"speak", "silent", "stop", "no_stop", "delegate", "no_delegate"}
_CACHE: dict = {}


def episode(task, seed):
    if (task, seed) not in _CACHE:
        _CACHE[task, seed] = generate(task, seed, renderer=default_renderer())
    return _CACHE[task, seed]


def _norm(text):
    return "".join(c for c in text.lower() if c.isalnum() or c == " ").strip()


def _events(ep):
    return (
        [(w.start, w.end) for w in ep.user_words + ep.model_words + ep.other_words]
        + [(e.time, e.time) for e in ep.user_text + ep.background]
        + [(f.time, f.time) for f in ep.video]
        + [(g.start, g.end) for g in ep.grading]
    )


@pytest.mark.parametrize("task", TASK_NAMES)
def test_deterministic_with_a_fresh_renderer(task):
    a = episode(task, 1)
    b = generate(task, 1, renderer=SpeechRenderer())  # empty cache: renders redone
    assert a.user_audio.tobytes() == b.user_audio.tobytes()
    assert a.model_audio.tobytes() == b.model_audio.tobytes()
    for field in ("user_words", "model_words", "other_words", "user_text", "background", "grading"):
        assert getattr(a, field) == getattr(b, field), field
    assert len(a.video) == len(b.video)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a.video, b.video))
    assert a.metadata == b.metadata and a.task == b.task == task


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("task", TASK_NAMES)
def test_episode_well_formed(task, seed):
    ep = episode(task, seed)
    n = 12 * 16000
    assert ep.duration == 12.0 and ep.user_audio.shape == ep.model_audio.shape == (n,)
    assert ep.user_audio.dtype == ep.model_audio.dtype == np.float32
    assert np.abs(ep.user_audio).max() <= 1.0 and np.abs(ep.model_audio).max() <= 1.0
    assert np.sqrt(np.mean(ep.user_audio**2)) > 0.001  # at least the noise floor
    assert (np.abs(ep.model_audio).max() > 0.05) == bool(ep.model_words)
    for s, e in _events(ep):
        assert 0.0 <= s <= e <= ep.duration + 1e-9
    for words in (ep.user_words, ep.model_words, ep.other_words):
        assert all(w.start <= w.end for w in words)
        assert all(a.start <= b.start for a, b in zip(words, words[1:]))
    assert ep.grading and all(g.kind in KINDS and g.start < g.end for g in ep.grading)
    assert all(g.expected for g in ep.grading if g.kind in ("speak", "delegate"))
    assert ep.metadata["instruction_mode"] in ("typed", "spoken", "none")
    if ep.metadata["instruction_mode"] == "typed":
        assert ep.user_text
    for f in ep.video:
        assert f.image.shape == (160, 160, 3) and f.image.dtype == np.uint8


def _utterance_starts(words, gap=0.5):
    starts, last_end = [], -1.0
    for w in words:
        if w.start - last_end > gap:
            starts.append(w)
        last_end = w.end
    return starts


def _speak_windows_met(ep):
    """Each speak window has a model utterance starting in it that contains `expected`."""
    utts, cur = [], []
    for w in ep.model_words:
        if cur and w.start - cur[-1].end > 0.5:
            utts.append(cur)
            cur = []
        cur.append(w)
    utts += [cur] if cur else []
    for g in ep.grading:
        if g.kind != "speak":
            continue
        said = [" ".join(x.text for x in u) for u in utts if g.start <= u[0].start < g.end]
        ok = [t for t in said if _norm(g.expected) in _norm(t)]
        assert ok, (ep.episode_id, g)


def _silent_windows_met(ep):
    for g in ep.grading:
        if g.kind == "silent":
            assert not [w for w in ep.model_words if g.start <= w.start < g.end], (ep.episode_id, g)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("task", ("timespeak", "cuespeak", "turntaking"))
def test_responses_are_causal_and_graded(task, seed):
    ep = episode(task, seed)
    assert ep.model_words
    assert ep.model_words[0].start >= ep.metadata["instruction_end"] + LAT
    if task == "cuespeak":
        starts = _utterance_starts(ep.model_words, gap=0.05)
        assert len(starts) == len(ep.metadata["cue_ends"])
        for w, cue_end in zip(starts, ep.metadata["cue_ends"]):
            assert w.start >= cue_end + LAT
    if task == "turntaking":
        starts = _utterance_starts(ep.model_words)
        for w, q_end in zip(starts, ep.metadata["question_ends"]):
            assert w.start >= q_end + LAT and w.start <= q_end + 0.8 + 1e-6
        assert ep.metadata["question_end"] == ep.metadata["question_ends"][0]
    _speak_windows_met(ep)
    _silent_windows_met(ep)


@pytest.mark.parametrize("seed", range(8))
def test_interruption_stops_and_talks_through_backchannels(seed):
    ep = episode("interruption", seed)
    md = ep.metadata
    assert ep.model_words[0].start >= md["instruction_end"] + LAT
    onset = md["interruption_onset"]
    if onset is not None:
        stop = [g for g in ep.grading if g.kind == "stop"]
        assert len(stop) == 1 and stop[0].start == onset
        assert onset + LAT <= md["model_stop"] <= stop[0].end
        assert max(w.end for w in ep.model_words) <= md["model_stop"] + 1e-6
        assert not np.any(ep.model_audio[int(np.ceil(md["model_stop"] * 16000)) + 1 :])
        assert any(w.start >= onset for w in ep.user_words)  # the user really cut in
    for g in ep.grading:
        if g.kind == "no_stop":  # the model's speech spans the whole backchannel window
            assert ep.model_words[0].start < g.start and ep.model_words[-1].end > g.end
    _silent_windows_met(ep)


def test_interruption_variants_are_all_covered():
    variants = {episode("interruption", s).metadata["variant"] for s in range(8)}
    assert {"interrupt", "backchannel"} <= {v.split("+")[-1] for v in variants}


@pytest.mark.parametrize("seed", SEEDS)
def test_others_model_stays_silent(seed):
    ep = episode("others", seed)
    assert not ep.model_words and not np.any(ep.model_audio)
    assert ep.user_words or ep.other_words
    assert [g.kind for g in ep.grading] == ["silent"] * len(ep.grading)


@pytest.mark.parametrize("seed", range(8))
def test_delegation_request_result_answer(seed):
    ep = episode("delegation", seed)
    md = ep.metadata
    kinds = {g.kind for g in ep.grading}
    if md["variant"] == "direct":
        assert not ep.background and "no_delegate" in kinds
        assert ep.model_words[0].start >= md["question_end"] + LAT
        return
    req, res = ep.background
    assert (req.kind, res.kind) == ("request", "result") and req.job_id == res.job_id
    assert md["question_end"] + LAT <= req.time < res.time
    assert 1.0 <= res.time - req.time <= 4.0
    assert res.text == answer_request(req.text)
    assert ep.model_words[0].start == pytest.approx(req.time)  # the filler starts with the request
    answer_start = md["answer_time"]
    assert answer_start >= res.time + LAT
    answer = " ".join(w.text for w in ep.model_words if w.start >= answer_start - 1e-6)
    assert _norm(res.text) in _norm(answer)
    if md["user_busy"] is not None:  # never talk over the user
        u0, u1 = md["user_busy"]
        assert not (u0 - 0.2 <= answer_start < u1 + 0.2)
    _speak_windows_met(ep)


def test_delegation_has_both_variants():
    assert {episode("delegation", s).metadata["variant"] for s in range(8)} == {"direct", "delegate"}


def test_answer_request():
    assert answer_request("What is 347 times 29?") == str(347 * 29)
    assert answer_request("what is 1234 plus 5678") == "6912"
    assert answer_request("What is 10 minus 25") == "-15"
    assert answer_request("What's the weather in Paris?") == "sunny and 18 degrees"
    assert answer_request("what is the population of tokyo") == "about 14 million people"
    with pytest.raises(ValueError, match="cannot serve"):
        answer_request("what is the meaning of life")


def test_mix_covers_all_tasks_and_records_the_choice():
    assert {mix_task(s) for s in range(60)} == set(TASK_NAMES)
    for s in (0, 1):
        assert generate("mix", s).task == mix_task(s)
    with pytest.raises(ValueError, match="unknown task"):
        generate("nope", 0)


def test_both_instruction_modes_and_video_occur():
    eps = [episode(t, s) for t in TASK_NAMES for s in SEEDS]
    assert {e.metadata["instruction_mode"] for e in eps} >= {"typed", "spoken"}
    assert any(e.video for e in eps) and any(not e.video for e in eps)


def test_short_duration_clips_everything():
    for task in TASK_NAMES:
        ep = generate(task, 5, duration_s=4.0)
        assert ep.user_audio.shape == (64000,)
        for s, e in _events(ep):
            assert 0.0 <= s <= e <= 4.0 + 1e-9


def test_delegation_typed_types_every_question_and_keeps_the_seed_draws():
    modes = {}
    for seed in range(6):
        typed = generate("delegation_typed", seed, duration_s=10.0, renderer=default_renderer())
        assert typed.task == "delegation" and typed.metadata["instruction_mode"] == "typed"
        assert len(typed.user_text) == 1  # the question arrives as typed text (asides may be spoken)
        assert all(w.start > typed.user_text[0].time for w in typed.user_words)
        mixed = generate("delegation", seed, duration_s=10.0, renderer=default_renderer())
        modes[seed] = mixed.metadata["instruction_mode"]
        if modes[seed] == "typed":  # same seed, same draws: the identical episode
            assert typed.user_text == mixed.user_text and typed.background == mixed.background
            np.testing.assert_array_equal(typed.model_audio, mixed.model_audio)
    assert set(modes.values()) == {"typed", "spoken"}  # the seeds above exercise both branches
    assert "delegation_typed" not in TASK_NAMES  # a curriculum variant: "mix" never draws it
    with pytest.raises(ValueError, match="instruction_mode"):
        from interaction_jax.data.tasks import delegation

        delegation.generate(0, duration_s=5.0, renderer=default_renderer(), instruction_mode="shouted")


@pytest.mark.parametrize("task", ("timespeak", "cuespeak", "turntaking", "interruption"))
def test_typed_and_spoken_variants_fix_the_mode_and_keep_the_seed_draws(task):
    from interaction_jax.data.tasks import TASKS

    assert f"{task}_typed" in TASKS and f"{task}_spoken" in TASKS
    assert f"{task}_typed" not in TASK_NAMES  # curriculum variants: plain "mix" never draws them
    for seed in range(4):
        mixed = episode(task, seed)
        mode = mixed.metadata["instruction_mode"]
        for forced in ("typed", "spoken"):
            ep = generate(f"{task}_{forced}", seed, renderer=default_renderer())
            assert ep.task == task and ep.metadata["instruction_mode"] == forced
            if forced == "typed":
                assert ep.user_text, "a typed instruction arrives as user text"
            else:
                assert not ep.user_text, "a spoken instruction leaves the typed stream empty"
            if forced == mode:  # same seed, same draws: the identical episode
                np.testing.assert_array_equal(ep.user_audio, mixed.user_audio)
                assert ep.grading == mixed.grading


def test_weighted_mix_draws_by_weight_and_rejects_bad_specs():
    from interaction_jax.data.tasks import parse_mix

    spec = "mix:timespeak_typed=3,others=1"
    names, p = parse_mix(spec)
    assert names == ("timespeak_typed", "others") and np.allclose(p, [0.75, 0.25])
    drawn = [mix_task(s, spec) for s in range(2000)]
    share = drawn.count("timespeak_typed") / len(drawn)
    assert abs(share - 0.75) < 0.04  # binomial sd ~0.01
    assert mix_task(7, spec) == mix_task(7, spec)
    ep = generate(spec, 3, duration_s=6.0)
    assert ep.task == mix_task(3, spec).removesuffix("_typed")
    assert parse_mix("mix:cuespeak")[1].tolist() == [1.0]  # weight defaults to 1
    for bad, msg in (("mix:", "mix spec"), ("mix:chess=1", "unknown task 'chess'"), ("mix:others=0", "must be > 0"),
                     ("mix:others=x", "must be a number"), ("mix:others,others", "listed twice")):
        with pytest.raises(ValueError, match=msg):
            generate(bad, 0)


def test_cuespeak_late_answers_later_inside_the_same_graded_windows():
    """cuespeak_late: each response starts 0.5-0.7 s after its cue word ends (cuespeak: 0.25-0.45 s,
    later only while an earlier response plays), and every speak window is still [cue end, +1.2 s)."""
    for task, (lo, hi) in (("cuespeak_typed", (0.25, 0.45)), ("cuespeak_late_typed", (0.5, 0.7))):
        for seed in (5, 6):
            ep = generate(task, seed, duration_s=10.0)
            assert ep.task == "cuespeak" and ep.metadata["instruction_mode"] == "typed"
            ends = ep.metadata["cue_ends"]
            speak = [g for g in ep.grading if g.kind == "speak"]
            assert len(speak) == len(ends) > 0
            gaps = []
            for g, e in zip(speak, ends):
                assert g.start == pytest.approx(e) and g.end == pytest.approx(e + 1.2)
                said = [w.start for w in ep.model_words if g.start <= w.start < g.end]
                assert said, (task, e)
                gaps.append(said[0] - e)
            assert min(gaps) >= lo - 1e-6, (task, gaps)  # never earlier than the variant's gap
            assert any(g <= hi + 1e-6 for g in gaps), (task, gaps)  # and on time where nothing plays
