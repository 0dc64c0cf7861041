"""Delegation: hand work the model cannot do itself to the background model, then weave the result in.

The user asks a question. In 75% of episodes (seeded) it needs a tool: big-number arithmetic
("what is 347 times 29") or a lookup ("what is the weather in Paris"). The model says a short
filler 0.3-0.6 s after the question and, at the filler's start, emits
`BackgroundEvent("request", t, request_text, job_id)`; the `result` arrives 1-4 s later and
the model speaks it 0.3-0.6 s after arrival, after its filler, and — if the user is talking
then — only once they stop. The other 25% ask an easy question the model answers directly.

`answer_request` is the deterministic tool backend (the background module reuses it).

Grading: `delegate` in [q_end, q_end + 1.5) (expected = request text), `speak` from the result
arrival (expected = the result text); easy questions get `no_delegate` in [q_end, q_end + 3)
and a `speak` window for the answer.
"""

from __future__ import annotations

import re

from interaction_jax.data.episode import BackgroundEvent, Episode
from interaction_jax.data.speech import SpeechRenderer
from interaction_jax.data.tasks.common import EpisodeBuilder
from interaction_jax.data.tasks.turntaking import QA_BANK

LOOKUP = {
    ("weather", "paris"): "sunny and 18 degrees",
    ("weather", "london"): "rainy and 12 degrees",
    ("weather", "tokyo"): "cloudy and 22 degrees",
    ("weather", "cairo"): "hot and 35 degrees",
    ("population", "paris"): "about 2 million people",
    ("population", "tokyo"): "about 14 million people",
    ("population", "london"): "about 9 million people",
    ("population", "cairo"): "about 10 million people",
}
_ARITH = re.compile(r"^what is (-?\d+) (times|plus|minus) (-?\d+)$")
_LOOKUP = re.compile(r"^what is the (weather|population) (?:in|of) ([a-z ]+)$")
FILLERS = ("Let me check.", "One moment.", "Let me look that up.")
USER_ASIDES = ("Take your time, I am not in a hurry.", "I will wait.", "No rush at all.")
DELEGATE_PROB = 0.75


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[?!.,']", " ", text.lower()).split()).replace("what s ", "what is ")


def answer_request(request_text: str) -> str:
    """Deterministic tool backend: a calculator (times/plus/minus) and a small lookup table.

    Raises ValueError for requests it cannot serve (the caller turns that into an `error` event).
    """
    q = _normalise(request_text)
    m = _ARITH.match(q)
    if m:
        a, op, c = int(m.group(1)), m.group(2), int(m.group(3))
        return str(a * c if op == "times" else a + c if op == "plus" else a - c)
    m = _LOOKUP.match(q)
    if m and (m.group(1), m.group(2).strip()) in LOOKUP:
        return LOOKUP[(m.group(1), m.group(2).strip())]
    raise ValueError(f"answer_request: cannot serve request {request_text!r}")


def _tool_question(rng) -> tuple[str, str]:
    """(question as asked, spoken answer template with {result})."""
    kind = int(rng.integers(3))
    if kind == 0:
        a, c = int(rng.integers(100, 1000)), int(rng.integers(11, 100))
        return f"What is {a} times {c}?", "The answer is {result}."
    if kind == 1:
        a, c = int(rng.integers(1000, 10000)), int(rng.integers(1000, 10000))
        return f"What is {a} plus {c}?", "The answer is {result}."
    topic, city = sorted(LOOKUP)[int(rng.integers(len(LOOKUP)))]
    city = city.title()
    if topic == "weather":
        return f"What is the weather in {city}?", f"In {city} it is {{result}}."
    return f"What is the population of {city}?", f"{city} has {{result}}."


def generate(seed: int, *, duration_s: float, renderer: SpeechRenderer, instruction_mode: str = "mixed") -> Episode:
    """One delegation episode; `instruction_mode="typed"` types every question (the curriculum task
    "delegation_typed": the request is then copied from text, not transcribed from speech)."""
    b = EpisodeBuilder("delegation", seed, duration_s, renderer, instruction_mode)
    rng = b.rng
    t0 = float(rng.uniform(0.3, 0.8))
    if rng.random() >= DELEGATE_PROB:
        question, answer, key = QA_BANK[int(rng.integers(len(QA_BANK)))]
        q_end = b.instruct(question, t0)
        b.model_says(answer, q_end + b.gap(0.3, 0.7))
        b.window("no_delegate", q_end, q_end + 3.0)
        b.window("speak", q_end, q_end + 1.5, key)
        b.metadata.update(variant="direct", question_end=q_end, instruction_end=q_end)
        return b.finish()
    question, template = _tool_question(rng)
    request = _normalise(question)
    result = answer_request(request)
    q_end = b.instruct(question, t0)
    request_t = q_end + b.gap(0.3, 0.6)
    filler = b.model_says(str(rng.choice(FILLERS)), request_t)
    filler_end = filler[-1].end if filler else request_t
    result_t = request_t + float(rng.uniform(1.0, 4.0))
    job = 1
    b.background.append(BackgroundEvent("request", request_t, request, job))
    b.background.append(BackgroundEvent("result", result_t, result, job))
    user_busy: tuple[float, float] | None = None
    if rng.random() < 0.4:  # the user talks while the job runs; maybe over the arrival
        aside = b.user_says(str(rng.choice(USER_ASIDES)), filler_end + float(rng.uniform(0.3, 1.5)))
        if aside:
            user_busy = (aside[0].start, aside[-1].end)
    say_at = max(result_t + b.gap(0.3, 0.6), filler_end + 0.3)
    if user_busy is not None and user_busy[0] - 0.2 <= say_at < user_busy[1] + 0.2:
        say_at = user_busy[1] + b.gap(0.3, 0.6)  # wait until the user stops
    b.model_says(template.format(result=result), say_at)
    b.window("delegate", q_end, q_end + 1.5, request)
    b.window("speak", result_t, max(result_t + 2.0, say_at + 1.0), result)
    b.metadata.update(
        variant="delegate", question_end=q_end, instruction_end=q_end, request_time=request_t,
        result_time=result_t, answer_time=say_at, user_busy=user_busy,
    )  # fmt: skip
    return b.finish()
