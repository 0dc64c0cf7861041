"""Synthetic interaction tasks: deterministic `Episode` generators, one module per task.

`generate(task, seed)` renders one episode with espeak-ng speech; `task="mix"` lets the seed
pick a task uniformly (recorded in `episode.task`); `"mix:timespeak_typed=3,others=1"` draws from
the listed tasks by weight. See `common.py` for the conventions all
tasks share (latency floor, typed-text read time, mixing) and each module for its grading
tolerances.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from interaction_jax.data.episode import Episode
from interaction_jax.data.speech import SpeechRenderer, default_renderer
from interaction_jax.data.tasks import cuespeak, delegation, interruption, others, refusal, timespeak, turntaking
from interaction_jax.data.tasks.delegation import answer_request
from interaction_jax.data.tasks.visual import TASKS as _VISUAL
from interaction_jax.errors import UserError

TaskFn = Callable[..., Episode]

TASKS: dict[str, TaskFn] = {
    "timespeak": timespeak.generate,
    "cuespeak": cuespeak.generate,
    "turntaking": turntaking.generate,
    "interruption": interruption.generate,
    "others": others.generate,
    "delegation": delegation.generate,
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)  # the tasks "mix" draws from
# The refusal tasks (refusal.py) are selectable by name or in a weighted mix; plain "mix" never draws them.
# CueSpeak with the response 0.5-0.7 s after the cue (cuespeak.LATE_RESPONSE_GAP_S), graded the same way
TASKS["cuespeak_late"] = functools.partial(cuespeak.generate, response_gap_s=cuespeak.LATE_RESPONSE_GAP_S)
TASKS.update(refusal=refusal.generate, refusal_benign=refusal.generate_benign, refusal_redteam=refusal.generate_redteam)
# Visual-proactivity tasks (visual.py): selectable by name or in a weighted mix; plain "mix" never draws them.
VISUAL_TASKS: tuple[str, ...] = tuple(_VISUAL)
TASKS.update(_VISUAL)
# `<visual task>_clean`: the same episodes (same seeds, same content) with a still camera and no
# noise or flicker (visual_scene.Scene(clean=True)); episode.task keeps the base name.
CLEAN_VISUAL_TASKS: tuple[str, ...] = tuple(f"{t}_clean" for t in _VISUAL)
TASKS.update({f"{t}_clean": functools.partial(fn, clean=True) for t, fn in _VISUAL.items()})
# Curriculum variants: every task that gives an instruction has `<task>_typed` (every instruction
# typed, so content is copied from text) and `<task>_spoken` (every instruction spoken). They are
# selectable by name or in a weighted mix, never drawn by plain "mix"; episode.task keeps the
# base name and episode.metadata["instruction_mode"] says which it was.
INSTRUCTED_TASKS = ("timespeak", "cuespeak", "cuespeak_late", "turntaking", "interruption", "delegation", "refusal",
                    "refusal_benign", "refusal_redteam")
INSTRUCTED_TASKS = (*INSTRUCTED_TASKS, *VISUAL_TASKS, *CLEAN_VISUAL_TASKS)
for _name in INSTRUCTED_TASKS:
    for _mode in ("typed", "spoken"):
        TASKS[f"{_name}_{_mode}"] = functools.partial(TASKS[_name], instruction_mode=_mode)
_MIX_SALT = 0x6D6978  # decorrelates the task choice from the task's own draws



class TaskError(UserError, ValueError):
    """An unknown task name or a malformed mix spec."""


def parse_mix(spec: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Task names and normalised weights of a mix spec.

    `"mix"` is uniform over `TASK_NAMES`; `"mix:timespeak_typed=3,others=1,turntaking"` draws each
    listed task (any name of `TASKS`) with probability proportional to its weight (default 1).
    """
    if spec == "mix":
        return TASK_NAMES, np.full(len(TASK_NAMES), 1.0 / len(TASK_NAMES))
    if not spec.startswith("mix:") or not spec[4:].strip():
        raise TaskError(f"tasks: a mix spec is 'mix' or 'mix:task=weight,...', got {spec!r}")
    names, weights = [], []
    for item in spec[4:].split(","):
        name, _, w = item.strip().partition("=")
        if name not in TASKS:
            raise TaskError(f"tasks: unknown task {name!r} in mix {spec!r}; choose from {sorted(TASKS)}")
        if name in names:
            raise TaskError(f"tasks: task {name!r} listed twice in mix {spec!r}")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise TaskError(f"tasks: weight of {name!r} in mix {spec!r} must be a number, got {w!r}") from None
        if not np.isfinite(weight) or weight <= 0:
            raise TaskError(f"tasks: weight of {name!r} in mix {spec!r} must be > 0, got {w!r}")
        names.append(name)
        weights.append(weight)
    p = np.asarray(weights, np.float64)
    return tuple(names), p / p.sum()


def is_mix(task: str) -> bool:
    return task == "mix" or task.startswith("mix:")


def mix_task(seed: int, spec: str = "mix") -> str:
    """The task a mix episode with this seed uses (`parse_mix`; plain "mix" is uniform over `TASK_NAMES`)."""
    names, p = parse_mix(spec)
    rng = np.random.default_rng([int(seed), _MIX_SALT])
    if spec == "mix":  # the historical draw: seeds of existing stores keep their tasks
        return names[int(rng.integers(len(names)))]
    return names[int(rng.choice(len(names), p=p))]


def check_task(task: str) -> None:
    """Raises TaskError (a ValueError) naming the problem when `task` is neither a task name nor a mix spec."""
    if is_mix(task):
        parse_mix(task)
    elif task not in TASKS:
        raise TaskError(f"tasks: unknown task {task!r}; choose one of {sorted(TASKS)}, 'mix' or 'mix:task=weight,...'")


def generate(
    task: str, seed: int, *, duration_s: float = 12.0, renderer: SpeechRenderer | None = None
) -> Episode:
    """One episode of `task` (a name or a mix spec) for `seed`; identical seeds give identical episodes."""
    check_task(task)
    if is_mix(task):
        task = mix_task(seed, task)
    renderer = renderer if renderer is not None else default_renderer()
    return TASKS[task](int(seed), duration_s=float(duration_s), renderer=renderer)


__all__ = ["INSTRUCTED_TASKS", "TASKS", "TASK_NAMES", "answer_request", "check_task", "generate", "is_mix", "mix_task",
           "parse_mix"]
