"""Synthetic interaction tasks: deterministic `Episode` generators, one module per task.

`generate(task, seed)` renders one episode with espeak-ng speech; `task="mix"` lets the seed
pick a task uniformly (recorded in `episode.task`). See `common.py` for the conventions all
tasks share (latency floor, typed-text read time, mixing) and each module for its grading
tolerances.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from interaction_jax.data.episode import Episode
from interaction_jax.data.speech import SpeechRenderer, default_renderer
from interaction_jax.data.tasks import cuespeak, delegation, interruption, others, timespeak, turntaking
from interaction_jax.data.tasks.delegation import answer_request

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
# Curriculum variants: selectable by name, never drawn by "mix" (episode.task keeps the base name).
TASKS["delegation_typed"] = functools.partial(delegation.generate, instruction_mode="typed")
_MIX_SALT = 0x6D6978  # decorrelates the task choice from the task's own draws


def mix_task(seed: int) -> str:
    """The task a "mix" episode with this seed uses (uniform over `TASK_NAMES`)."""
    rng = np.random.default_rng([int(seed), _MIX_SALT])
    return TASK_NAMES[int(rng.integers(len(TASK_NAMES)))]


def generate(
    task: str, seed: int, *, duration_s: float = 12.0, renderer: SpeechRenderer | None = None
) -> Episode:
    """One episode of `task` (or "mix") for `seed`; identical seeds give identical episodes."""
    if task == "mix":
        task = mix_task(seed)
    if task not in TASKS:
        raise ValueError(f"tasks: unknown task {task!r}; choose one of {sorted(TASKS)} or 'mix'")
    renderer = renderer if renderer is not None else default_renderer()
    return TASKS[task](int(seed), duration_s=float(duration_s), renderer=renderer)


__all__ = ["TASKS", "TASK_NAMES", "answer_request", "generate", "mix_task"]
