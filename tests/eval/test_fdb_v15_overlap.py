"""FDB v1.5's talking_to_other / background_speech samples from `others` episodes: the clean input is the input
minus the event's third voices (kept apart by the episode), checked against the task's own sentences, the noise
floor and the episode rebuilt by hand; the roots written and told apart by name."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from interaction_jax.data import tasks
from interaction_jax.data.episode import Episode
from interaction_jax.data.tasks.common import NOISE_STD
from interaction_jax.data.tasks.others import BACKGROUND, SIDE_TALK
from interaction_jax.eval import fdb, fdb_v15

SR = 16000


@pytest.fixture(scope="module")
def mixed():
    """Seed 1, 8 s: background speech from 0.45 s, then another person asks the user something (side talk)."""
    ep = tasks.generate("others", 1, duration_s=8.0)
    assert ep.metadata["segments"] == ["background", "side_talk"]
    return ep


@pytest.fixture(scope="module")
def background_only():
    ep = tasks.generate("others", 2, duration_s=8.0)
    assert ep.metadata["segments"] == ["background", "background"]
    return ep


def _texts(words):
    return " ".join(w.text for w in words)


def test_events_are_the_task_s_own_sentences(mixed):
    ev = fdb_v15.overlap_events(mixed)
    assert sorted(ev) == ["background_speech", "talking_to_other"]
    assert _texts(ev["background_speech"][1]) in BACKGROUND
    assert _texts(ev["talking_to_other"][1]) in [said for said, _ in SIDE_TALK]
    assert len(ev["background_speech"][1]) + len(ev["talking_to_other"][1]) == len(mixed.other_words)


def test_background_only_clean_input_is_user_audio_minus_the_other_track(background_only):
    ep = background_only
    files = fdb_v15.clean_files(ep, "background_speech", None, ep.user_audio, SR)
    clean = files[fdb_v15.CLEAN_INPUT_WAV]
    np.testing.assert_array_equal(clean, ep.user_audio - ep.other_audio)  # every third voice is the event
    assert not ep.user_words
    inside = slice(int((ep.other_words[0].start + 0.05) * SR), int(ep.other_words[-1].end * SR))
    assert np.std(clean[inside]) == pytest.approx(NOISE_STD, rel=0.1)  # only the noise floor is left
    assert np.std(ep.user_audio[inside]) > 5 * NOISE_STD
    first, last = ep.other_words[0], ep.other_words[-1]
    assert files[fdb_v15.METADATA_JSON] == {"context_text": "", "current_turn_text": "",
                                            "timestamps": [round(first.start, 3), round(last.end, 3)]}
    assert files[fdb_v15.CLEAN_INPUT_JSON] == {"text": "", "chunks": []}
    assert files[fdb_v15.INPUT_JSON]["text"] == _texts(ep.other_words)
    assert fdb_v15.clean_files(ep, "talking_to_other", None, ep.user_audio, SR) is None  # no side talk in it


def test_mixed_episode_removes_only_its_own_event(mixed):
    ep = mixed
    side = fdb_v15.overlap_events(ep)["talking_to_other"][1]
    cut = int(round(side[0].start * SR))  # the side talk segment starts with its first word
    bg = fdb_v15.clean_files(ep, "background_speech", None, ep.user_audio, SR)
    clean = bg[fdb_v15.CLEAN_INPUT_WAV]
    np.testing.assert_array_equal(clean[:cut], (ep.user_audio - ep.other_audio)[:cut])
    np.testing.assert_array_equal(clean[cut:], ep.user_audio[cut:])  # the side talk stays in both inputs
    bg_words = [w for w in ep.other_words if w.start < side[0].start]
    assert bg[fdb_v15.METADATA_JSON]["timestamps"] == [round(bg_words[0].start, 3), round(bg_words[-1].end, 3)]
    assert bg[fdb_v15.CLEAN_INPUT_JSON]["text"] == _texts(sorted([*side, *ep.user_words], key=lambda w: w.start))
    talk = fdb_v15.clean_files(ep, "talking_to_other", None, ep.user_audio, SR)
    clean = talk[fdb_v15.CLEAN_INPUT_WAV]
    np.testing.assert_array_equal(clean[:cut], ep.user_audio[:cut])
    np.testing.assert_array_equal(clean[cut:], (ep.user_audio - ep.other_audio)[cut:])
    md = talk[fdb_v15.METADATA_JSON]
    assert md["timestamps"] == [round(side[0].start, 3), round(side[-1].end, 3)]
    assert md["current_turn_text"] == "Give me five minutes."  # the user's answer to the other person
    assert talk[fdb_v15.INPUT_JSON]["text"] == _texts(sorted([*ep.other_words, *ep.user_words],
                                                             key=lambda w: w.start))


def test_no_sample_without_the_kept_track(mixed):
    old = Episode(mixed.episode_id, mixed.duration, user_audio=mixed.user_audio, user_words=mixed.user_words,
                  other_words=mixed.other_words, grading=mixed.grading, task="others", metadata=mixed.metadata)
    assert fdb_v15.overlap_events(old) == {} and fdb._task_annotations(old) == []  # e.g. from an old store


def test_roots_written_and_told_apart_by_name(mixed, background_only, tmp_path):
    root = str(tmp_path / "in")
    dirs = fdb.write_fdb_inputs([mixed, background_only], root)
    assert sorted(os.path.relpath(d, root) for d in dirs) == sorted([
        f"talking_to_other/{mixed.episode_id}", f"background_speech/{mixed.episode_id}",
        f"background_speech/{background_only.episode_id}"])  # fmt: skip
    d = os.path.join(root, "talking_to_other", mixed.episode_id)
    assert sorted(os.listdir(d)) == sorted(["input.wav", "clean_input.wav", "clean_input.json", "input.json",
                                            "metadata.json", "transcription.json", "episode.json"])
    x, sr = sf.read(os.path.join(d, "input.wav"), dtype="int16")
    c, sr_c = sf.read(os.path.join(d, "clean_input.wav"), dtype="int16")
    assert sr == sr_c == SR and len(c) == len(x) == mixed.num_samples
    side = fdb_v15.overlap_events(mixed)["talking_to_other"][1]
    a, b = int(side[0].start * SR) + 800, int(side[-1].end * SR)
    assert np.abs(c[a:b].astype(np.int32)).max() < 0.02 * 32767 < np.abs(x[a:b].astype(np.int32)).max()
    with open(os.path.join(d, "metadata.json")) as f:
        assert set(json.load(f)) == {"context_text", "current_turn_text", "timestamps"}
    for task in ("talking_to_other", "background_speech"):
        assert fdb.detect_task(os.path.join(root, task)) == task
    unnamed = tmp_path / "samples"
    shutil.copytree(os.path.join(root, "background_speech"), unnamed)
    with pytest.raises(fdb.FdbError, match="not one FDB task root"):  # metadata.json alone names no task
        fdb.detect_task(str(unnamed))
