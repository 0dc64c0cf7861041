"""Refusal tasks: determinism, the taxonomy invariants, natural timing, escalation structure, registration."""

from pathlib import Path

import pytest

from interaction_jax.data import tasks
from interaction_jax.data.speech import SpeechRenderer, default_renderer
from interaction_jax.data.tasks import refusal, safety
from interaction_jax.data.tasks.turntaking import QA_BANK

TASKS = ("refusal", "refusal_benign", "refusal_redteam")
SEEDS = range(4)
_CACHE: dict = {}


def episode(task, seed, duration=16.0):
    if (task, seed, duration) not in _CACHE:
        _CACHE[task, seed, duration] = tasks.generate(task, seed, duration_s=duration, renderer=default_renderer())
    return _CACHE[task, seed, duration]


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_with_a_fresh_renderer(task):
    a, b = episode(task, 1), tasks.generate(task, 1, duration_s=16.0, renderer=SpeechRenderer())
    assert a.user_audio.tobytes() == b.user_audio.tobytes()
    assert a.model_audio.tobytes() == b.model_audio.tobytes()
    for field in ("user_words", "model_words", "user_text", "grading"):
        assert getattr(a, field) == getattr(b, field), field
    assert a.metadata == b.metadata and a.task == task
    assert episode(task, 2).metadata["turns"] != a.metadata["turns"]


def test_the_phrase_sets_keep_the_judgement_rule_exact():
    """Every refusal carries a marker; no benign answer, acknowledgement or request-side text does."""
    for core in safety.REFUSALS:
        assert safety.has_refusal_marker(safety.tokens(core)), core
    benign = [a for c in safety.CATEGORIES for _, a, _ in c.lookalikes] + [a for _, a, _ in QA_BANK]
    for text in [*benign, *safety.ACKNOWLEDGEMENTS, *(o for os in safety.PRESS_OPENERS.values() for o in os),
                 *(c.alternative for c in safety.CATEGORIES)]:
        assert not safety.has_refusal_marker(safety.tokens(text)), text
    for c in safety.CATEGORIES:
        assert len(c.fillers) >= 3 and len(c.lookalikes) >= 3
        for request, answer, key in c.lookalikes:
            assert set(safety.tokens(key)) <= set(safety.tokens(answer)), (request, key)
    assert len(safety.REQUEST_TEMPLATES) >= 10 and set(safety.STRATEGIES) == set(safety.PRESS_OPENERS)
    assert safety.is_refusal_text("Still no. Sorry, I can't help with that.")
    assert not safety.is_refusal_text("Still no.")  # an opener alone is no refusal
    assert not safety.is_refusal_text("Sorry, I can't help with that. Sure.")  # content outside the set


def _requests(category: str) -> set[tuple[str, ...]]:
    """Token sequences of every request text the templates can make for a category (before styling)."""
    out = set()
    for act, topic, followup in safety.category(category).fillers:
        texts = [t.format(act=act) for t in safety.REQUEST_TEMPLATES]
        texts += [t.format(act=act, followup=followup) for ts in safety.PRESS_TEMPLATES.values() for t in ts]
        texts += [t.format(topic=topic) for t in safety.SPLIT_SETUPS]
        out |= {tuple(safety.tokens(t)) for t in texts}
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("task", TASKS)
def test_model_side_is_only_refusals_or_answers(task, seed):
    """Disallowed turns get refusal-set sentences only; benign turns their answer; nothing else is said."""
    ep = episode(task, seed)
    turns = ep.metadata["turns"]
    assert turns and ep.metadata["instruction_end"] == turns[0]["end"]
    lookalike = {r: a for c in safety.CATEGORIES for r, a, _ in c.lookalikes} | {q: a for q, a, _ in QA_BANK}
    for turn in turns:
        if turn["kind"] in ("disallowed", "setup"):  # the request side is a template naming the category
            toks = safety.tokens(turn["request"])
            assert any(toks[-len(r):] == list(r) for r in _requests(turn["category"])), turn
        if turn["kind"] == "disallowed":
            assert safety.is_refusal_text(turn["response"]), turn
            assert turn["key"] in safety.REFUSAL_MARKERS and turn["category"] in safety.CATEGORY_NAMES
        elif turn["kind"] == "benign":
            assert not safety.has_refusal_marker(safety.tokens(turn["response"]))
            assert any(turn["response"] == a and safety.tokens(r) == safety.tokens(turn["request"])[-len(
                safety.tokens(r)):] for r, a in lookalike.items()), turn
        else:
            assert turn["kind"] == "setup" and turn["response"] in safety.ACKNOWLEDGEMENTS
    said = " ".join(w.text for w in ep.model_words)
    assert " ".join(" ".join(t["response"].split()) for t in turns).startswith(said)  # (the end may clip)
    if task == "refusal":
        assert {t["kind"] for t in turns} == {"disallowed"}
    if task == "refusal_benign":
        assert {t["kind"] for t in turns} == {"benign"}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("task", TASKS)
def test_responses_come_after_the_user_finishes(task, seed):
    ep = episode(task, seed)
    turns = ep.metadata["turns"]
    for i, turn in enumerate(turns):
        assert refusal.GAP_S[0] - 1e-9 <= turn["response_start"] - turn["end"] <= refusal.GAP_S[1] + 1e-9
        assert not [w for w in ep.model_words if turn["start"] <= w.start < turn["end"]]  # never over the user
        if i:
            prev_said = [w for w in ep.model_words if w.start < turn["start"]]
            assert prev_said and prev_said[-1].end <= turn["start"]
    speak = [g for g in ep.grading if g.kind == "speak"]
    assert [g.start for g in speak] == [t["end"] for t in turns if t["end"] < ep.duration]
    assert all(g.end - g.start == pytest.approx(refusal.LATE_S) for g in speak if g.end < ep.duration)


def test_redteam_presses_escalate_the_same_request():
    seen = set()
    for seed in range(5):
        ep = episode("refusal_redteam", seed, 30.0)
        turns = ep.metadata["turns"]
        dis = [t for t in turns if t["kind"] == "disallowed"]
        assert dis[0]["strategy"] == "initial" and len(dis) >= 2
        assert {t["category"] for t in dis} == {ep.metadata["category"]}  # one request, pressed again
        assert ep.metadata["strategies"] == [t["strategy"] for t in dis[1:]]
        for i, t in enumerate(turns):
            if t["strategy"] == "later":
                assert turns[i - 1]["kind"] == "benign"  # asked again after other questions
            if t["kind"] == "setup":
                assert turns[i + 1]["strategy"] == "split" and turns[i + 1]["kind"] == "disallowed"
        seen |= set(ep.metadata["strategies"])
    assert len(seen) >= 4  # the escalation strategies all occur over a few seeds
    short = [episode("refusal_redteam", s) for s in SEEDS]
    assert sum(len(e.metadata["strategies"]) >= 1 for e in short) >= len(short) // 2  # 16 s holds a press


def test_registered_names_modes_and_mixes():
    for name in TASKS:
        assert {name, f"{name}_typed", f"{name}_spoken"} <= set(tasks.TASKS)
        assert name not in tasks.TASK_NAMES  # plain "mix" (and the seeds of existing stores) unchanged
    typed = tasks.generate("refusal_redteam_typed", 4, duration_s=10.0)
    spoken = tasks.generate("refusal_redteam_spoken", 4, duration_s=10.0)
    assert typed.task == spoken.task == "refusal_redteam"
    assert typed.metadata["instruction_mode"] == "typed" and typed.user_text
    assert spoken.metadata["instruction_mode"] == "spoken" and not spoken.user_text
    t0, s0 = typed.metadata["turns"][0], spoken.metadata["turns"][0]
    assert (t0["category"], t0["response"]) == (s0["category"], s0["response"])  # same seed, same first exchange
    spec = "mix:refusal_typed=2,refusal_benign_typed=2,refusal_redteam=1,turntaking=1"
    tasks.check_task(spec)
    assert {tasks.mix_task(s, spec) for s in range(40)} == set(spec[4:].replace("=2", "").replace("=1", "").split(","))


def test_benchmark_seed_ranges_are_their_own():
    from interaction_jax.eval.episodes import eval_seed

    seeds = {eval_seed(t, i, s) for t in TASKS for s in ("test", "validation") for i in (0, 49_999)}
    others = {eval_seed(t, i, s) for t in ("timespeak", "delegation") for s in ("test", "validation")
              for i in (0, 49_999)}
    assert len(seeds) == 12 and not seeds & others


def test_synthetic_source_renders_a_weighted_mix():
    """On-the-fly training data (no data_dir) takes the same mix specs as prepare."""
    from interaction_jax.data.sources import SyntheticSource

    src = SyntheticSource("mix:refusal_typed=1,refusal_benign=1", 2, 0, 6.0)
    assert {src.episode(i).task for i in range(2)} <= {"refusal", "refusal_benign"}
    with pytest.raises(ValueError, match="unknown task 'chess'"):
        SyntheticSource("mix:chess=1", 2, 0, 6.0)


def test_turn_records_survive_a_prepared_store():
    """The benchmark reads metadata["turns"]; a prepared (serialised) episode keeps it exactly."""
    from interaction_jax.data.serialize import episode_from_bytes, episode_to_bytes

    ep = episode("refusal_redteam", 0)
    back = episode_from_bytes(episode_to_bytes(ep))
    assert back.metadata["turns"] == ep.metadata["turns"] and back.grading == ep.grading


def test_experiment_config_builds():
    from interaction_jax.config_lib import load_config

    c = load_config(str(Path(__file__).resolve().parents[2] / "experiments" / "refusal" / "config.py"))
    tasks.check_task(c.data.task)
    names, _ = tasks.parse_mix(c.data.task)
    assert {n.removesuffix("_typed") for n in names} == set(TASKS)
    assert c.data.window_micro_turns * c.layout.micro_turn_ms == c.data.episode_seconds * 1000  # whole episodes
    assert c.train.self_audio_dropout > 0 and c.layout.video_patches == 0
