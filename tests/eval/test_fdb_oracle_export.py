"""fdb.export_oracle_tree: the episodes' targets written as an FDB export (the known-good system FDB's scripts score
beside the model), checked against the episodes themselves: the target recording as output.wav, the target words
(cropped after the interruption) as output.json, the same layout as a model export, FDB's turn rule by hand."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from interaction_jax.data import tasks
from interaction_jax.eval import fdb


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    eps = [tasks.generate("turntaking", 1, duration_s=6.0), tasks.generate("interruption", 1, duration_s=6.0)]
    out = str(tmp_path_factory.mktemp("oracle") / "OUT")
    return eps, out, fdb.export_oracle_tree(eps, out)


def test_layout_is_a_task_root_per_task_without_clean_outputs(exported):
    eps, out, runs = exported
    assert sorted(os.listdir(out)) == ["smooth_turn_taking", "timing_summary.json", "user_interruption"]
    assert sorted(runs) == ["smooth_turn_taking", "user_interruption"]
    for root, ep in zip(("smooth_turn_taking", "user_interruption"), eps, strict=True):
        assert os.listdir(os.path.join(out, root)) == [ep.episode_id]
        assert fdb.detect_task(os.path.join(out, root)) == root
        files = set(os.listdir(os.path.join(out, root, ep.episode_id)))
        assert {"input.wav", "output.wav", "output.json", "timing.json", fdb.FDB_TASKS[root]} <= files
        assert not {"clean_output.wav", "clean_output.json"} & files


def test_output_wav_is_the_target_recording_on_the_input_clock(exported):
    eps, out, _ = exported
    for root, ep in zip(("smooth_turn_taking", "user_interruption"), eps, strict=True):
        d = os.path.join(out, root, ep.episode_id)
        wav, sr = sf.read(os.path.join(d, "output.wav"), dtype="float32")
        assert sr == 16000 and len(wav) == sf.info(os.path.join(d, "input.wav")).frames == ep.num_samples
        assert np.abs(wav - ep.model_audio).max() <= 1.0 / 32768 + 1e-7  # 16-bit PCM of the target
        assert np.abs(ep.model_audio).max() > 0.05  # the target speaks in both


def _chunks(out, root, ep):
    with open(os.path.join(out, root, ep.episode_id, "output.json")) as f:
        return json.load(f)["chunks"]


def test_output_json_holds_the_target_words(exported):
    eps, out, _ = exported
    tt, ui = eps
    chunks = _chunks(out, "smooth_turn_taking", tt)
    assert [c["text"] for c in chunks] == [w.text for w in tt.model_words] and chunks
    for c, w in zip(chunks, tt.model_words, strict=True):  # packed onto the text stream: within a micro-turn
        assert abs(c["timestamp"][0] - w.start) <= 0.2 + 1e-6
    # interruption: the target stops at the onset, so nothing starts after the end of the interruption
    with open(os.path.join(out, "user_interruption", ui.episode_id, "interrupt.json")) as f:
        end = json.load(f)[0]["timestamp"][1]
    assert _chunks(out, "user_interruption", ui) == []
    assert ui.model_words and all(w.start < end for w in ui.model_words)


def test_timing_scores_the_targets_by_fdb_s_rule(exported):
    eps, out, _ = exported
    tt = eps[0]
    with open(os.path.join(out, "smooth_turn_taking", tt.episode_id, "timing.json")) as f:
        text = json.load(f)["metrics"]["text"]
    with open(os.path.join(out, "smooth_turn_taking", tt.episode_id, "turn_taking.json")) as f:
        q_end = json.load(f)[0]["timestamp"][0]
    chunks = _chunks(out, "smooth_turn_taking", tt)
    span = chunks[-1]["timestamp"][1] - chunks[0]["timestamp"][0]
    turn = int(not (len(chunks) <= 3 and span < 1.0))  # FDB: at most 3 words spanning under 1 s is no turn
    assert text["fdb_take_turn"] == turn
    if turn:
        assert text["fdb_latency_s"] == pytest.approx(max(0.0, chunks[0]["timestamp"][0] - q_end), abs=1e-3)
