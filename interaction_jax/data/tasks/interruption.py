"""User interruption and backchannels: stop for a real interruption, keep talking over "uh-huh".

The user asks for something long; the model starts a long answer. Seeded variants:
  * `interrupt` (50%): the user cuts in mid-answer; the model breaks off at the first word
    boundary >= 0.2 s after the onset (at most 0.6 s after it), mid-word if need be.
  * `backchannel+interrupt` (30%): a backchannel ("uh-huh", "yeah", "mm-hmm") first, which
    the model talks through, then a real interruption.
  * `backchannel` (20%): only backchannels; the model finishes (or runs to the episode end).
Model audio is cut at the stop time (10 ms fade) and `model_words` keeps only words that had
started. Grading: `stop` in [onset, onset + 0.8) (speech must have ended inside it), and
`no_stop` in [bc_start, bc_end + 1.0) (the model keeps speaking throughout).
"""

from __future__ import annotations

from interaction_jax.data.episode import Episode
from interaction_jax.data.speech import SpeechRenderer
from interaction_jax.data.tasks.common import EpisodeBuilder

REQUESTS = (
    ("Tell me about the ocean.",
     "The ocean covers most of our planet. It is home to whales, fish and coral reefs. "
     "Its currents move heat around the world, and its tides follow the moon."),
    ("Can you explain how bread is made?",
     "Bread starts with flour, water, salt and yeast. You mix them into a dough and knead it. "
     "Then the dough rests and rises, and finally it is baked in a hot oven."),
    ("Tell me a story about a dragon.",
     "Once upon a time a small dragon lived in a cave by the sea. Every morning she flew over "
     "the village, and the children waved at her from the fields below."),
    ("What can you tell me about trains?",
     "Trains carry people and goods along steel rails. The first ones ran on steam, later ones "
     "on diesel, and many modern trains run on electricity from overhead wires."),
)  # fmt: skip
INTERRUPTIONS = (
    "Wait, hold on a second.",
    "Wait, wait, one moment please.",
    "Okay, stop, that is enough.",
    "Hang on, let me think.",
)
BACKCHANNELS = ("uh-huh", "yeah", "mm-hmm", "right", "okay")
STOP_DELAY_S, STOP_MAX_S, STOP_WINDOW_S = 0.2, 0.6, 0.8
NO_STOP_TAIL_S = 1.0


def _stop_time(model_words, onset: float) -> float:
    """First word boundary at least STOP_DELAY_S after the onset, capped at STOP_MAX_S."""
    for w in model_words:
        if w.end >= onset + STOP_DELAY_S:
            return min(w.end, onset + STOP_MAX_S)
    return onset + STOP_DELAY_S


def generate(seed: int, *, duration_s: float, renderer: SpeechRenderer, instruction_mode: str = "mixed") -> Episode:
    b = EpisodeBuilder("interruption", seed, duration_s, renderer, instruction_mode)
    rng = b.rng
    request, answer = REQUESTS[int(rng.integers(len(REQUESTS)))]
    u = rng.random()
    variant = "interrupt" if u < 0.5 else ("backchannel+interrupt" if u < 0.8 else "backchannel")
    ready = b.instruct(request, float(rng.uniform(0.3, 0.8)))
    answer_start = ready + b.gap(0.3, 0.7)
    full = b.render(answer, b.model_voice)
    answer_end = min(b.duration, answer_start + full.speech_end)
    t = answer_start + float(rng.uniform(0.8, 1.5))  # earliest user reaction
    backchannels: list[tuple[float, float]] = []
    if variant != "interrupt":
        for _ in range(1 if variant == "backchannel+interrupt" else int(rng.integers(1, 3))):
            words = b.render(str(rng.choice(BACKCHANNELS)), b.user_voice)
            if t + words.speech_end + NO_STOP_TAIL_S > answer_end:
                break
            said = b.user_says(" ".join(w.text for w in words.words), t)
            backchannels.append((t, said[-1].end))
            t = said[-1].end + NO_STOP_TAIL_S + float(rng.uniform(0.3, 1.2))
    onset = None
    if variant != "backchannel" and t + STOP_WINDOW_S < answer_end:
        onset = t + float(rng.uniform(0.0, max(0.0, min(2.0, answer_end - t - STOP_WINDOW_S - 0.5))))
    if onset is None:
        words = b.model_says(answer, answer_start)
        stop = None
    else:
        uncut = [type(w)(w.text, answer_start + w.start, answer_start + w.end) for w in full.words]
        stop = _stop_time(uncut, onset)
        words = b.model_says(answer, answer_start, stop_at=stop)
        b.user_says(str(rng.choice(INTERRUPTIONS)), onset)
        b.window("stop", onset, onset + STOP_WINDOW_S)
        b.window("silent", onset + STOP_WINDOW_S, b.duration)
    for bc_start, bc_end in backchannels:
        b.window("no_stop", bc_start, bc_end + NO_STOP_TAIL_S)
    if onset is not None:
        variant = "backchannel+interrupt" if backchannels else "interrupt"
    else:
        variant = "backchannel" if backchannels else "none"
    b.metadata.update(
        variant=variant,
        instruction_end=ready, answer_start=answer_start, interruption_onset=onset, model_stop=stop,
        backchannels=backchannels, model_said=" ".join(w.text for w in words),
    )  # fmt: skip
    return b.finish()
