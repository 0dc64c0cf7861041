"""Visual proactivity: speak when the picture changes, unprompted by any user turn (issue 20).

Four tasks on seeded scenes (`visual_scene.py`: clutter, camera jitter, noise, one frame per
200 ms micro-turn). A *visual event* happens at a frame: its time is the time of the first frame
that shows it, so the earliest a model can answer is one micro-turn later (`MIN_LATENCY_S`).
Every episode records `metadata["visual_events"]` (time, what, expected words),
`metadata["lookalikes"]` (times of changes that are not the cue) and
`metadata["reply_available_at"]` ([target utterance start, time its trigger is first visible]:
what a turn-based cascade may know at an end of turn, `eval/baseline.py`).

  visual_cue       "Say now when the light turns green." / "Say go when the square leaves the
                   screen.": `speak` in [event, event + 1.2) with the response word; `silent`
                   from the instruction to the event and after the answer; one extra `silent`
                   window per look-alike [change, change + 1.2) (the light turns another colour,
                   another object turns the cue colour, another shape leaves, the shape comes
                   close to the edge and turns back).
  repcount         "Count my reps.": an object goes up and down N times at a varying pace; count
                   k is `speak` in [rep k completes, +1.0) (clipped at the next completion), and
                   `silent` before the first, between counts and after the last: each count on
                   time, never early. Half reps (a short lift) are look-alikes and not counted.
  visual_qa        "What am I holding up?" asked before or after an object is held up: `speak`
                   "<colour> <shape>" in [max(visible, question understood), +1.5); `silent` before
                   (not before it is visible, not before being asked) and after. A different
                   object may be held up and put away first (a look-alike).
  visual_negative  The picture changes (the light, shapes leaving, objects held up, reps) while
                   nothing asks about it, or the instruction names a cue that never happens:
                   `silent` throughout.

Instructions are typed or spoken (`EpisodeBuilder.instruct`; `<task>_typed` / `<task>_spoken`
variants). The target model starts 0.2-0.45 s after the event.
"""

from __future__ import annotations

import numpy as np

from interaction_jax.data.episode import Episode
from interaction_jax.data.speech import SpeechRenderer
from interaction_jax.data.tasks.common import MIN_LATENCY_S, EpisodeBuilder, number_word
from interaction_jax.data.tasks.visual_scene import (
    COLOURS,
    FRAME_S,
    FRAME_SIZE,
    JITTER,
    PALETTE,
    SHAPES,
    Scene,
    Sprite,
    add_traffic_light,
    first_frame,
    frame_time,
    jitter_colour,
    path,
)

RESPONSES = ("now", "go", "there", "yes", "ding")
CUE_LATE_S = 1.2  # visual_cue: answer within this long after the event
COUNT_LATE_S = 1.0  # repcount: each count within this long after the rep completes
QA_LATE_S = 1.5  # visual_qa: answer within this long after it can be answered
LOOKALIKE_GAP_S = 1.0  # look-alikes end at least this long before the cue
COUNT_TEXTS = ("Count my reps.", "Count my reps out loud.", "Count how many times I lift it.")
QA_TEXTS = ("What am I holding up?", "What is this?", "What am I showing you?")
SCENES = ("light", "leave", "hold", "reps")


def _frame_at_or_after(t: float) -> int:
    return int(np.ceil(t / FRAME_S - 1e-9))


def _finish(b: EpisodeBuilder, frames, *, scene: str, events: list[dict], lookalikes: list[float],
            available: list[tuple[float, float]]) -> Episode:
    """The episode with the scene's frames (not the builder's random video) and the visual metadata."""
    b.metadata.update(scene=scene, visual_events=events, lookalikes=[round(t, 6) for t in lookalikes],
                      reply_available_at=[[round(s, 6), round(t, 6)] for s, t in available],
                      frame_s=FRAME_S, frame_size=FRAME_SIZE)
    ep = b.finish()
    ep.video = frames
    return ep


def _say(b: EpisodeBuilder, text: str, event: float, lo: float = 0.2, hi: float = 0.45) -> float | None:
    """Target speech `text` 0.2-0.45 s after `event` (None when that is past the end)."""
    at = event + max(MIN_LATENCY_S, float(b.rng.uniform(lo, hi)))
    if at >= b.duration:
        return None
    b.model_says(text, at)
    return at


def _other(rng: np.random.Generator, options, exclude) -> str:
    choices = [o for o in options if o != exclude]
    return str(choices[int(rng.integers(len(choices)))])


def _spread(rng: np.random.Generator, lo: int, hi: int, count: int, spacing: int) -> list[int]:
    """Up to `count` frames in [lo, hi], at least `spacing` apart (seeded)."""
    out: list[int] = []
    k = lo
    for _ in range(count):
        if k > hi:
            break
        f = int(rng.integers(k, min(hi, k + 2 * spacing) + 1))
        out.append(f)
        k = f + spacing
    return out


# ---- scenes ---------------------------------------------------------------------------------------
def _light(scene: Scene, rng: np.random.Generator, target: str | None, event: int | None,
           changes: list[int]) -> tuple[list[tuple[float, str]], dict]:
    """A traffic light that changes colour at `changes` (never to `target`) and to `target` at `event`.

    With probability 0.35 one change is a look-alike elsewhere: a small note turns `target`.
    Returns [(time, description)] of the look-alikes and the light's geometry.
    """
    n = scene.n
    radius = float(rng.uniform(6, 9))
    x, y = float(rng.uniform(14, FRAME_SIZE - 14)), float(rng.uniform(14, 40))
    others = [c for c in COLOURS if c != target]
    lamp_names = [others[int(rng.integers(len(others)))]] * n
    note_change = changes[int(rng.integers(len(changes)))] if changes and target and rng.random() < 0.35 else None
    looks = []
    for k in changes:
        if k == note_change:
            continue
        new = _other(rng, others, lamp_names[k])
        lamp_names[k:] = [new] * (n - k)
        looks.append((frame_time(k), f"light turns {new}"))
    if event is not None:
        lamp_names[event:] = [target] * (n - event)
    tint = {c: jitter_colour(rng, PALETTE[c]) for c in COLOURS}
    add_traffic_light(scene, [tint[c] for c in lamp_names], x, y, radius)
    if note_change is not None:
        for _ in range(20):  # somewhere away from the light
            nx, ny = float(rng.uniform(10, FRAME_SIZE - 10)), float(rng.uniform(10, FRAME_SIZE - 10))
            if np.hypot(nx - x, ny - y) > radius + 18:
                break
        first = _other(rng, others, None)
        note = [tint[first]] * note_change + [tint[target]] * (n - note_change)
        xy = scene.track()
        xy[:] = scene.world(nx, ny)
        scene.add(Sprite("note", "square", float(rng.uniform(8, 12)), xy, note))
        looks.append((frame_time(note_change), f"a note turns {target}"))
    return sorted(looks), {"light_xy": [round(x, 2), round(y, 2)], "light_radius": round(radius, 2),
                           "lamp": lamp_names}


def _inside(rng: np.random.Generator, size: float) -> tuple[float, float]:
    m = size / 2 + JITTER + 3
    return float(rng.uniform(m, FRAME_SIZE - m)), float(rng.uniform(m, FRAME_SIZE - m))


def _exit_point(rng: np.random.Generator, x: float, y: float, size: float) -> tuple[float, float]:
    """A point beyond the nearest frame edge (fully out of view for any camera shake)."""
    out = size / 2 + 2 * JITTER + 3
    edges = [(x, -out), (x, FRAME_SIZE + out), (-out, y), (FRAME_SIZE + out, y)]
    d = [y, FRAME_SIZE - y, x, FRAME_SIZE - x]
    return edges[int(np.argmin(np.asarray(d) + rng.uniform(0, 8, 4)))]


def _leaver(scene: Scene, rng: np.random.Generator, name: str, shape: str, colour: tuple, exit_at: int | None,
            near_miss: int | None = None) -> Sprite:
    """A shape that wanders inside and, if `exit_at` is given, leaves the screen by about that frame.

    `near_miss`: a frame at which it comes right up to an edge (still in view) and turns back.
    """
    size = float(rng.uniform(12, 18))
    x, y = _inside(rng, size)
    pts = [(0, x, y)]
    last = exit_at - int(rng.integers(3, 7)) if exit_at is not None else scene.n - 1
    if near_miss is not None and 0 < near_miss < last - 2:
        m = size / 2 + JITTER + 1
        edge = int(rng.integers(4))
        nx = (m, FRAME_SIZE - m, x, x)[edge]
        ny = (y, y, m, FRAME_SIZE - m)[edge]
        pts += [(near_miss, nx, ny)]
        x, y = _inside(rng, size)
    k = pts[-1][0]
    if last > k + 1:
        pts.append((last, x, y))
    if exit_at is not None:
        ex, ey = _exit_point(rng, pts[-1][1], pts[-1][2], size)
        pts.append((max(exit_at, pts[-1][0] + 2), ex, ey))
        if pts[-1][0] < scene.n - 1:
            pts.append((scene.n - 1, ex, ey))
    elif pts[-1][0] < scene.n - 1:
        pts.append((scene.n - 1, *_inside(rng, size)))
    return scene.add(Sprite(name, shape, size, path(scene, pts), colour))


def _left_at(visible: np.ndarray) -> int | None:
    """First frame with nothing of the sprite in view after it was in view."""
    seen = first_frame(visible > 0)
    return None if seen is None else first_frame(visible == 0, seen)


def _held(scene: Scene, rng: np.random.Generator, name: str, shape: str, colour: tuple, start: int,
          end: int | None = None) -> Sprite:
    """An object held up (with an arm) in the middle of the frame for frames [start, end)."""
    size = float(rng.uniform(22, 30))
    xy = scene.track()
    cx, cy = scene.world(float(rng.uniform(30, 50)), float(rng.uniform(28, 40)))
    stop = scene.n if end is None else end
    drift = rng.normal(0, 0.4, (max(stop - start, 0), 2)).cumsum(axis=0).clip(-3, 3)
    xy[start:stop] = np.array([cx, cy]) + drift
    return scene.add(Sprite(name, shape, size, xy, colour, arm=True))


def _reps(scene: Scene, rng: np.random.Generator, start: int, max_reps: int, end: int,
          half_prob: float = 0.2) -> tuple[list[int], list[int], dict]:
    """An object lifted and lowered from frame `start`; returns (completion frames, half-rep ends, geometry).

    A rep of n frames (4..8, 0.8-1.6 s) rises by the amplitude A and is back at the bottom at its
    completion frame; rests of 0-2 frames between reps; a half rep rises by only 0.3 A.
    """
    size = float(rng.uniform(10, 14))
    bottom = float(rng.uniform(58, 64))
    amp = float(rng.uniform(24, 34))
    x0 = float(rng.uniform(20, 60))
    heights = np.zeros(scene.n)
    completions, halves = [], []
    k = start
    while len(completions) < max_reps:
        half = bool(completions) and rng.random() < half_prob
        n = int(rng.integers(4, 7)) if half else int(rng.integers(4, 9))
        if k + n > end:
            break
        j = np.arange(n + 1)
        heights[k : k + n + 1] = (0.3 if half else 1.0) * amp * np.sin(np.pi * j / n)
        (halves if half else completions).append(k + n)
        k += n + int(rng.integers(0, 3))
    shape = ("circle", "square", "bar")[int(rng.integers(3))]
    colour = jitter_colour(rng, PALETTE[COLOURS[int(rng.integers(len(COLOURS)))]])
    xy = scene.track()
    drift = rng.normal(0, 0.3, scene.n).cumsum().clip(-4, 4)
    xy[:, 0] = x0 + drift + JITTER
    xy[:, 1] = bottom - heights + JITTER
    scene.add(Sprite("weight", shape, size if shape != "bar" else 2 * size, xy, colour))
    return completions, halves, {"bottom": round(bottom, 2), "amplitude": round(amp, 2), "weight_shape": shape,
                                 "weight_rgb": list(colour)}


# ---- tasks ----------------------------------------------------------------------------------------
def visual_cue(seed: int, *, duration_s: float, renderer: SpeechRenderer, instruction_mode: str = "mixed",
               clean: bool = False) -> Episode:
    b = EpisodeBuilder("visual_cue", seed, duration_s, renderer, instruction_mode)
    rng = b.rng
    kind = ("light", "leave")[int(rng.integers(2))]
    word = str(rng.choice(RESPONSES))
    target = COLOURS[int(rng.integers(len(COLOURS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    if kind == "light":
        text = f"Say {word} when the light turns {target}."
    else:
        text = f"Say {word} when the {shape} leaves the screen."
    ready = b.instruct(text, float(rng.uniform(0.3, 0.8)))
    scene = Scene(rng, b.duration, clean=clean)
    lo = _frame_at_or_after(ready + 1.2)
    hi = max(lo, int(np.floor((b.duration - CUE_LATE_S) / FRAME_S)))
    planned = int(rng.integers(lo, hi + 1))
    spacing = int(round(LOOKALIKE_GAP_S / FRAME_S))
    looks_at = _spread(rng, _frame_at_or_after(ready + MIN_LATENCY_S), planned - spacing - 1,
                       int(rng.integers(1, 4)), spacing)
    info: dict = {}
    if kind == "light":
        looks, info = _light(scene, rng, target, planned, looks_at)
        frames, visible = scene.render()
        event_k = planned
    else:
        colour_name = COLOURS[int(rng.integers(len(COLOURS)))]
        colour = jitter_colour(rng, PALETTE[colour_name])
        near = looks_at[0] if looks_at and rng.random() < 0.5 else None
        _leaver(scene, rng, "target", shape, colour, planned, near_miss=near)
        decoys = [k for k in looks_at if k != near]
        for i, k in enumerate(decoys):  # other shapes in other colours
            other = _other(rng, SHAPES, shape)
            _leaver(scene, rng, f"decoy{i}", other, jitter_colour(rng, PALETTE[_other(rng, COLOURS, colour_name)]), k)
        info = {"target_rgb": list(colour)}
        frames, visible = scene.render()
        event_k = _left_at(visible["target"])
        looks = [(frame_time(near), f"the {shape} comes close to the edge")] if near is not None else []
        for i in range(len(decoys)):
            left = _left_at(visible[f"decoy{i}"])
            if left is not None:
                looks.append((frame_time(left), "another shape leaves the screen"))
        looks.sort()
    event = frame_time(event_k) if event_k is not None else b.duration
    looks = [(t, d) for t, d in looks if ready + MIN_LATENCY_S <= t <= event - LOOKALIKE_GAP_S + 1e-6]
    said = _say(b, word, event)
    b.window("silent", ready + MIN_LATENCY_S, event)
    for t, _ in looks:
        b.window("silent", t, min(t + CUE_LATE_S, event))
    b.window("speak", event, event + CUE_LATE_S, word)
    b.window("silent", event + CUE_LATE_S, b.duration)
    b.metadata.update(instruction_end=ready, variant=kind, word=word, target=target if kind == "light" else shape,
                      **info)
    events = [{"time": event, "what": text, "expected": word}]
    return _finish(b, frames, scene=kind, events=events, lookalikes=[t for t, _ in looks],
                   available=[(said, event)] if said is not None else [])


def repcount(seed: int, *, duration_s: float, renderer: SpeechRenderer, instruction_mode: str = "mixed",
             clean: bool = False) -> Episode:
    b = EpisodeBuilder("repcount", seed, duration_s, renderer, instruction_mode)
    rng = b.rng
    text = str(rng.choice(COUNT_TEXTS))
    ready = b.instruct(text, float(rng.uniform(0.3, 0.8)))
    scene = Scene(rng, b.duration, clean=clean)
    start = _frame_at_or_after(ready + float(rng.uniform(0.3, 1.0)))
    end = int(np.floor((b.duration - COUNT_LATE_S) / FRAME_S))
    completions, halves, info = _reps(scene, rng, start, int(rng.integers(3, 9)), end)
    frames, _ = scene.render()
    times = [frame_time(k) for k in completions]
    available = []
    b.window("silent", ready + MIN_LATENCY_S, times[0] if times else b.duration)
    for i, t in enumerate(times):
        nxt = times[i + 1] if i + 1 < len(times) else b.duration
        said = _say(b, number_word(i + 1), t, 0.2, 0.35)
        if said is not None:
            available.append((said, t))
        b.window("speak", t, min(t + COUNT_LATE_S, nxt), number_word(i + 1))
        if t + COUNT_LATE_S < nxt:
            b.window("silent", t + COUNT_LATE_S, nxt)
    half_times = [frame_time(k) for k in halves]
    b.metadata.update(instruction_end=ready, reps=len(times), rep_times=times, half_rep_times=half_times, **info)
    events = [{"time": t, "what": f"rep {i + 1} completes", "expected": number_word(i + 1)}
              for i, t in enumerate(times)]
    return _finish(b, frames, scene="reps", events=events, lookalikes=half_times, available=available)


def visual_qa(seed: int, *, duration_s: float, renderer: SpeechRenderer, instruction_mode: str = "mixed",
              clean: bool = False) -> Episode:
    b = EpisodeBuilder("visual_qa", seed, duration_s, renderer, instruction_mode)
    rng = b.rng
    colour, shape = COLOURS[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))]
    answer = f"{colour} {shape}"
    text = str(rng.choice(QA_TEXTS))
    asked_first = bool(rng.random() < 0.5)
    decoy = bool(rng.random() < 0.5)
    scene = Scene(rng, b.duration, clean=clean)
    if rng.random() < 0.5:  # a look-alike differs in one attribute
        d_colour, d_shape = _other(rng, COLOURS, colour), shape
    else:
        d_colour, d_shape = colour, _other(rng, SHAPES, shape)
    looks = []
    if asked_first:
        t0 = float(rng.uniform(1.6, 2.4)) if decoy else float(rng.uniform(0.3, 0.8))
        if decoy:  # shown and put away before the question
            d0 = _frame_at_or_after(float(rng.uniform(0.2, 0.5)))
            _held(scene, rng, "decoy", d_shape, jitter_colour(rng, PALETTE[d_colour]), d0,
                  _frame_at_or_after(t0 - 0.2))
            looks.append(frame_time(d0))
        ready = b.instruct(text, t0)
        lo = _frame_at_or_after(ready + 1.0)
        hi = max(lo, int(np.floor((b.duration - QA_LATE_S) / FRAME_S)))
        appear = int(rng.integers(lo, min(hi, lo + 15) + 1))
        answerable = frame_time(appear)
    else:
        appear = _frame_at_or_after(float(rng.uniform(1.8, 2.6)) if decoy else float(rng.uniform(0.4, 1.2)))
        if decoy:
            d0 = _frame_at_or_after(0.2)
            _held(scene, rng, "decoy", d_shape, jitter_colour(rng, PALETTE[d_colour]), d0, appear - 2)
            looks.append(frame_time(d0))
        ready = b.instruct(text, frame_time(appear) + float(rng.uniform(0.5, 1.5)))
        answerable = ready
    rgb = jitter_colour(rng, PALETTE[colour])
    _held(scene, rng, "object", shape, rgb, appear)
    frames, _ = scene.render()
    said = _say(b, answer, answerable, 0.25, 0.5)
    b.window("silent", MIN_LATENCY_S if not asked_first else ready + MIN_LATENCY_S, answerable)
    b.window("speak", answerable, answerable + QA_LATE_S, answer)
    b.window("silent", answerable + QA_LATE_S + 1.0, b.duration)  # room for the answer to end: then once only
    b.metadata.update(instruction_end=ready, variant="asked_before" if asked_first else "asked_after",
                      answer=answer, appear_time=frame_time(appear), object_rgb=list(rgb),
                      decoy=f"{d_colour} {d_shape}" if decoy else None)
    events = [{"time": frame_time(appear), "what": f"{answer} held up", "expected": answer}]
    return _finish(b, frames, scene="hold", events=events, lookalikes=looks,
                   available=[(said, frame_time(appear))] if said is not None else [])


def visual_negative(seed: int, *, duration_s: float, renderer: SpeechRenderer,
                    instruction_mode: str = "mixed", clean: bool = False) -> Episode:
    b = EpisodeBuilder("visual_negative", seed, duration_s, renderer, instruction_mode)
    rng = b.rng
    variant = ("unasked", "absent_cue")[int(rng.integers(2))]
    kind = SCENES[int(rng.integers(len(SCENES)))] if variant == "unasked" else ("light", "leave")[int(rng.integers(2))]
    word = str(rng.choice(RESPONSES))
    target = COLOURS[int(rng.integers(len(COLOURS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    quiet_from = MIN_LATENCY_S
    if variant == "absent_cue":
        text = (f"Say {word} when the light turns {target}." if kind == "light"
                else f"Say {word} when the {shape} leaves the screen.")
        quiet_from = b.instruct(text, float(rng.uniform(0.3, 0.8))) + MIN_LATENCY_S
        b.metadata["instruction_end"] = quiet_from - MIN_LATENCY_S
    else:
        b.metadata["instruction_mode"] = "none"
    scene = Scene(rng, b.duration, clean=clean)
    spacing = int(round(LOOKALIKE_GAP_S / FRAME_S))
    changes = _spread(rng, _frame_at_or_after(quiet_from), scene.n - 3, int(rng.integers(2, 5)), spacing)
    if kind == "light":
        _light(scene, rng, target if variant == "absent_cue" else None, None, changes)
    elif kind == "leave":
        if variant == "absent_cue":  # the named shape is in view and stays; others leave
            _leaver(scene, rng, "named", shape, jitter_colour(rng, PALETTE[_other(rng, COLOURS, None)]), None,
                    near_miss=changes[0] if changes else None)
        for i, k in enumerate(changes):
            other = _other(rng, SHAPES, shape if variant == "absent_cue" else None)
            _leaver(scene, rng, f"decoy{i}", other, jitter_colour(rng, PALETTE[_other(rng, COLOURS, None)]), k)
    elif kind == "hold":
        start = changes[0] if changes else 2
        _held(scene, rng, "object", SHAPES[int(rng.integers(3))],
              jitter_colour(rng, PALETTE[COLOURS[int(rng.integers(len(COLOURS)))]]), start)
    else:
        _reps(scene, rng, changes[0] if changes else 2, 8, scene.n - 2)
    frames, _ = scene.render()
    b.window("silent", quiet_from, b.duration)
    absent = (target if kind == "light" else shape) if variant == "absent_cue" else None
    b.metadata.update(variant=variant, absent=absent)
    return _finish(b, frames, scene=kind, events=[], lookalikes=[frame_time(k) for k in changes], available=[])


TASKS = {"visual_cue": visual_cue, "repcount": repcount, "visual_qa": visual_qa, "visual_negative": visual_negative}
