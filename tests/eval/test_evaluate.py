"""Episode -> chunk feeding, and the evaluate command end to end on a random-init tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from interaction_jax.data import tasks
from interaction_jax.eval.episodes import EVAL_SEED_BASE, benchmark_episodes, episode_chunks, eval_seed
from interaction_jax.eval.grading import normalise
from interaction_jax.streams.layout import StreamLayout


def test_eval_seeds_are_disjoint_from_training(tiny_config):
    d = tiny_config.data
    seeds = {eval_seed(t, i) for t in ("timespeak", "cuespeak", "turntaking") for i in range(1000)}
    assert len(seeds) == 3000 and min(seeds) >= EVAL_SEED_BASE
    assert d.eval_seed + 100_000 < EVAL_SEED_BASE
    with pytest.raises(ValueError, match="no benchmark seed range"):
        eval_seed("chess", 0)


def test_episode_chunks_carry_exactly_the_user_side(tiny_config):
    layout = StreamLayout.from_config(tiny_config)
    ep = None
    for seed in range(40):  # a delegation episode with typed text, video and a result
        cand = tasks.generate("delegation", seed, duration_s=8.0)
        if cand.user_text and cand.video and any(e.kind == "result" for e in cand.background):
            ep = cand
            break
    assert ep is not None
    chunks = episode_chunks(ep, layout)
    assert len(chunks) == layout.num_turns(ep.duration)
    audio = np.concatenate([c.audio for c in chunks])
    np.testing.assert_array_equal(audio[: ep.user_audio.size], ep.user_audio)
    for ev in ep.user_text:
        assert ev.text in chunks[layout.input_turn(ev.time)].text
    for f in ep.video:
        t = layout.input_turn(f.time)
        last = max((g for g in ep.video if layout.input_turn(g.time) == t), key=lambda g: g.time)
        assert chunks[t].video is last.image
    heard = [(t, w) for t, c in enumerate(chunks) for w in c.transcript]
    assert heard == sorted(((layout.input_turn(w.end), w) for w in ep.user_words), key=lambda x: x[0])
    fed = [(t, e.kind, e.text) for t, c in enumerate(chunks) for e in c.background]
    want = [(layout.input_turn(e.time), "done", e.text) for e in ep.background if e.kind == "result"]
    assert fed == want  # results arrive in their micro-turn; the model's own requests are never inputs
    assert all(not c.background for c in episode_chunks(ep, layout, scripted_background=False))


def test_evaluate_random_tiny_end_to_end(tiny_config, tmp_path):
    from interaction_jax.evaluate import EvaluateError, evaluate

    res = evaluate(tiny_config, workdir=None, init="random", benchmarks=["timespeak"], num_examples=2,
                   out_dir=str(tmp_path), oracle=True, slots=2, episode_seconds=6.0, asr="test_spoken:fake_asr")
    saved = json.loads((tmp_path / "results.json").read_text())
    # evaluate keeps the windows the oracle passes, so its accuracy alone cannot fail: the windows it
    # dropped must be exactly those whose words the episode cuts off at its end (decided without grading).
    oracle = saved["metrics"]["oracle (targets)"]["timespeak"]
    eps = benchmark_episodes("timespeak", 2, 6.0, log=False)
    said = {e.episode_id: {t for x in e.model_words if x.start < e.duration for t in normalise(x.text)} for e in eps}
    speak = [(e, set(normalise(w.expected)) <= said[e.episode_id]) for e in eps for w in e.grading if w.kind == "speak"]
    examples = len({e.episode_id for e, kept in speak if kept})  # TimeSpeak counts episodes with a speak window
    assert oracle["ungradable_windows"] == sum(not kept for _, kept in speak)
    assert oracle["accuracy"] == 1.0 and oracle["examples"] == examples > 0
    assert set(saved["metrics"]) == {"model", "oracle (targets)", "model (spoken)"}
    rows = [r for r in saved["examples"]["timespeak"] if r["system"] == "model"]
    assert len(rows) == 2
    for row in rows:
        assert all(0.0 <= w["start"] < 6.0 for w in row["output"]["words"])
    assert res["slots"] == 2 and saved["commit"]
    with pytest.raises(EvaluateError, match="unknown"):
        evaluate(tiny_config, workdir=None, init="random", benchmarks=["chess"], num_examples=1, out_dir=str(tmp_path))
    with pytest.raises(EvaluateError, match="needs --workdir"):
        evaluate(tiny_config, workdir=None, init="checkpoint", benchmarks=["timespeak"], num_examples=1,
                 out_dir=str(tmp_path), episode_seconds=4.0)


def test_validation_and_test_seed_ranges_are_disjoint():
    from interaction_jax.eval.episodes import SPLIT_OFFSET

    test = {eval_seed(t, i, "test") for t in ("timespeak", "delegation") for i in range(0, 50_000, 7)}
    val = {eval_seed(t, i, "validation") for t in ("timespeak", "delegation") for i in range(0, 50_000, 7)}
    assert not test & val and set(SPLIT_OFFSET) == {"test", "validation"}
    assert eval_seed("cuespeak", 3, "validation") == EVAL_SEED_BASE + 100_000 + 50_000 + 3
    with pytest.raises(ValueError, match="split"):
        eval_seed("cuespeak", 0, "train")
    with pytest.raises(ValueError, match="index"):
        eval_seed("cuespeak", 50_000)  # would run into the next range


def test_benchmark_episodes_force_the_instruction_mode_on_the_same_seeds():
    from interaction_jax.eval.episodes import benchmark_episodes

    typed = benchmark_episodes("timespeak", 3, 6.0, log=False, instruction_mode="typed")
    spoken = benchmark_episodes("timespeak", 3, 6.0, log=False, instruction_mode="spoken")
    mixed = benchmark_episodes("timespeak", 3, 6.0, log=False)
    assert [e.metadata["instruction_mode"] for e in typed] == ["typed"] * 3
    assert [e.metadata["instruction_mode"] for e in spoken] == ["spoken"] * 3
    for t, s, m in zip(typed, spoken, mixed, strict=True):
        assert t.metadata["word"] == s.metadata["word"] == m.metadata["word"]  # same seed, same content
    others = benchmark_episodes("others", 2, 6.0, log=False, instruction_mode="typed")  # no instruction to force
    np.testing.assert_array_equal(others[0].user_audio, benchmark_episodes("others", 1, 6.0, log=False)[0].user_audio)
    with pytest.raises(ValueError, match="instruction_mode"):
        benchmark_episodes("timespeak", 1, 6.0, log=False, instruction_mode="sung")
