"""Visual-proactivity tasks: determinism, registration, and the graded event really is in the pixels.

The pixel checks read the frames only (colour counts, centroids), not the generator's event
bookkeeping: the graded time is the speak window's start.
"""

import numpy as np
import pytest

from interaction_jax.data import tasks
from interaction_jax.data.speech import SpeechRenderer, default_renderer
from interaction_jax.data.tasks.visual_scene import FRAME_S, PALETTE

DUR = 8.0
_CACHE: dict = {}


def episode(task, seed, duration=DUR):
    if (task, seed, duration) not in _CACHE:
        _CACHE[task, seed, duration] = tasks.generate(task, seed, duration_s=duration, renderer=default_renderer())
    return _CACHE[task, seed, duration]


def _find(task, pred, seeds=range(40)):
    for s in seeds:
        ep = episode(task, s)
        if pred(ep):
            return ep
    raise AssertionError(f"no seed of {task} matches")


def _frame(ep, t):
    k = int(round(t / FRAME_S))
    assert abs(ep.video[k].time - k * FRAME_S) < 1e-6
    return ep.video[k].image.astype(np.int32)


def _count(img, rgb, tol=30):
    return int((np.abs(img - np.asarray(rgb)[None, None]).max(axis=-1) <= tol).sum())


def _speak_starts(ep):
    return [w.start for w in ep.grading if w.kind == "speak"]


@pytest.mark.parametrize("task", tasks.VISUAL_TASKS)
def test_deterministic_and_well_formed(task):
    a = episode(task, 3)
    b = tasks.generate(task, 3, duration_s=DUR, renderer=SpeechRenderer())
    assert a.user_audio.tobytes() == b.user_audio.tobytes() and a.model_audio.tobytes() == b.model_audio.tobytes()
    assert a.grading == b.grading and a.model_words == b.model_words and a.metadata == b.metadata
    assert len(a.video) == len(b.video) == int(DUR / FRAME_S)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a.video, b.video))
    assert [f.time for f in a.video] == pytest.approx([k * FRAME_S for k in range(len(a.video))])
    assert all(f.image.shape == (80, 80, 3) and f.image.dtype == np.uint8 for f in a.video)
    assert a.task == task and all(0 <= w.start < w.end <= DUR for w in a.grading)
    assert not np.array_equal(a.video[0].image, a.video[1].image)  # noise + jitter: every frame differs
    assert not np.array_equal(a.video[0].image, tasks.generate(task, 4, duration_s=DUR).video[0].image)


def test_registered_by_name_in_mixes_and_with_instruction_variants():
    for t in tasks.VISUAL_TASKS:
        assert t in tasks.TASKS and f"{t}_typed" in tasks.TASKS and f"{t}_spoken" in tasks.TASKS
        assert t not in tasks.TASK_NAMES  # plain "mix" keeps its historical draw
    names, _ = tasks.parse_mix("mix:visual_cue=1,repcount_typed=2,visual_qa,visual_negative")
    assert names == ("visual_cue", "repcount_typed", "visual_qa", "visual_negative")
    assert tasks.generate("mix:visual_cue=1", 5, duration_s=DUR).task == "visual_cue"
    typed = tasks.generate("visual_cue_typed", 1, duration_s=DUR)
    spoken = tasks.generate("visual_cue_spoken", 1, duration_s=DUR)
    assert typed.metadata["instruction_mode"] == "typed" and typed.user_text and not typed.user_words
    assert spoken.metadata["instruction_mode"] == "spoken" and spoken.user_words and not spoken.user_text
    assert typed.metadata["word"] == spoken.metadata["word"]  # the seed's content; only the delivery differs


def test_light_turns_the_cue_colour_exactly_at_the_graded_time():
    ep = _find("visual_cue", lambda e: e.metadata["variant"] == "light" and e.metadata["lookalikes"])
    (t,) = _speak_starts(ep)
    x, y = ep.metadata["light_xy"]
    target = np.asarray(PALETTE[ep.metadata["target"]])

    def lamp(t_s):  # median colour of the lamp's centre (camera shake is at most 2 px)
        img = _frame(ep, t_s)
        return np.median(img[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3].reshape(-1, 3), axis=0)

    def nearest(rgb):
        return min(PALETTE, key=lambda c: np.abs(np.asarray(PALETTE[c]) - rgb).sum())

    assert nearest(lamp(t)) == ep.metadata["target"] and np.abs(lamp(t) - target).max() < 40
    assert nearest(lamp(t - FRAME_S)) != ep.metadata["target"]
    for la in ep.metadata["lookalikes"]:  # a change at each look-alike, never to the cue colour
        assert nearest(lamp(la)) != ep.metadata["target"] or _count(_frame(ep, la), target) > 0


def test_shape_is_gone_from_the_frame_exactly_at_the_graded_time():
    ep = _find("visual_cue", lambda e: e.metadata["variant"] == "leave" and _speak_starts(e))
    (t,) = _speak_starts(ep)
    rgb = ep.metadata["target_rgb"]
    k = int(round(t / FRAME_S))
    counts = [_count(f.image.astype(np.int32), rgb) for f in ep.video]
    assert counts[k - 1] > 0 and all(c == 0 for c in counts[k:])
    assert counts[0] > 20


def test_rep_completions_in_the_pixels_are_the_graded_count_times():
    ep = _find("repcount", lambda e: len(_speak_starts(e)) >= 3 and e.metadata["half_rep_times"])
    rgb = ep.metadata["weight_rgb"]
    ys = []
    for f in ep.video:
        mask = (np.abs(f.image.astype(np.int32) - np.asarray(rgb)).max(axis=-1) <= 30)
        ys.append(np.nonzero(mask)[0].mean())
    ys = np.asarray(ys)
    bottom, top = ys.max(), ys.min()
    mid = (bottom + top) / 2
    completions, high = [], False
    for k, yk in enumerate(ys):  # a rep: above the middle, then back at the bottom
        high = high or yk < mid
        if high and yk > bottom - 4:
            completions.append(round(k * FRAME_S, 6))
            high = False
    assert completions == pytest.approx(_speak_starts(ep))
    words = [w.expected for w in ep.grading if w.kind == "speak"]
    assert words == ["one", "two", "three", "four", "five", "six", "seven", "eight"][: len(words)]


@pytest.mark.parametrize("variant", ["asked_before", "asked_after"])
def test_held_object_is_visible_when_the_answer_is_graded(variant):
    ep = _find("visual_qa", lambda e: e.metadata["variant"] == variant)
    (t,) = _speak_starts(ep)
    rgb = ep.metadata["object_rgb"]
    appear = [k for k, f in enumerate(ep.video) if _count(f.image.astype(np.int32), rgb) > 100]
    first = appear[-1]
    while first - 1 in appear:  # the last unbroken run of frames showing it: the held object
        first -= 1
    if variant == "asked_before":
        assert first * FRAME_S == pytest.approx(t)  # answerable exactly when it comes into view
    else:
        assert first * FRAME_S < t  # already visible when the question is understood
    silent = [w for w in ep.grading if w.kind == "silent" and w.end <= t + 1e-9]
    assert silent and silent[0].end == pytest.approx(t)
    colour, shape = ep.metadata["answer"].split()
    assert colour in PALETTE and shape in ("square", "circle", "triangle")


def test_negatives_are_silent_throughout():
    for s in range(6):
        ep = episode("visual_negative", s)
        assert not ep.model_words and all(w.kind == "silent" for w in ep.grading)
        assert ep.grading[-1].end == DUR
        assert ep.metadata["instruction_mode"] == ("none" if ep.metadata["variant"] == "unasked" else
                                                   ep.metadata["instruction_mode"])
        diff = np.abs(ep.video[-1].image.astype(int) - ep.video[0].image.astype(int)).mean()
        assert diff > 1.0  # the picture changes


def test_clean_variant_has_the_same_content_without_camera_noise():
    """`<task>_clean`: same seed, same words and windows, but a still, noiseless camera."""
    seed = next(s for s in range(40) if episode("visual_cue_typed", s).metadata["variant"] == "light")
    ep = episode("visual_cue_typed", seed)
    clean = episode("visual_cue_clean_typed", seed)
    assert clean.task == "visual_cue" and clean.metadata["word"] == ep.metadata["word"]
    assert [(w.kind, w.start, w.end, w.expected) for w in clean.grading] == \
        [(w.kind, w.start, w.end, w.expected) for w in ep.grading]
    a, b = (x.image.astype(np.int32) for x in clean.video[:2])
    assert np.array_equal(a, b)  # nothing happens in the first 0.2 s: a still camera shows the same frame
    noisy0, noisy1 = (x.image.astype(np.int32) for x in ep.video[:2])
    assert np.abs(noisy0 - noisy1).mean() > 1.0  # the default camera's noise changes every pixel


def test_benchmark_renders_the_clean_scene_on_the_same_seeds():
    from interaction_jax.eval.episodes import benchmark_episodes

    default, = benchmark_episodes("visual_qa", 1, DUR, log=False, instruction_mode="typed")
    clean, = benchmark_episodes("visual_qa", 1, DUR, log=False, instruction_mode="typed", scene="clean")
    assert clean.episode_id == default.episode_id
    assert [e.text for e in clean.user_text] == [e.text for e in default.user_text]
    assert np.array_equal(clean.video[0].image, clean.video[1].image)
    assert not np.array_equal(default.video[0].image, default.video[1].image)
    with pytest.raises(ValueError, match="scene must be one of"):
        benchmark_episodes("visual_qa", 1, DUR, log=False, scene="noisy")
