"""CueSpeak: respond to cue words while the user keeps talking ("say ding whenever I name a color").

After the instruction the user speaks one long stream of words; words of the cue category are
scattered among distractors (other categories and fillers), at least `MIN_SPACING` words
apart. The model says the response 0.25-0.45 s after each cue word ends (0.5-0.7 s in the
variant "cuespeak_late"), overlapping the user's ongoing speech; if its previous response is
still playing, it waits for it to finish.

Grading: `speak` in [cue_end, cue_end + 1.2) per cue (expected = the response word), and
`silent` over a stretch of distractors before the first cue (a false-alarm check).
"""

from __future__ import annotations

from interaction_jax.data.episode import Episode
from interaction_jax.data.speech import SpeechRenderer
from interaction_jax.data.tasks.common import MIN_LATENCY_S, EpisodeBuilder

CATEGORIES = {
    "color": ("red", "blue", "green", "yellow", "purple", "orange"),
    "animal": ("dog", "cat", "horse", "rabbit", "lion", "monkey"),
    "fruit": ("apple", "banana", "cherry", "mango", "lemon", "grape"),
    "country": ("France", "Japan", "Brazil", "Canada", "Egypt", "India"),
}
CATEGORY_PLURAL = {"color": "a color", "animal": "an animal", "fruit": "a fruit", "country": "a country"}
FILLERS = (
    "table", "window", "river", "chair", "cloud", "paper", "music", "garden", "bottle", "pencil",
    "morning", "street", "letter", "button", "basket", "mirror", "ladder", "candle",
)  # fmt: skip
RESPONSES = ("ding", "beep", "bingo", "yes")
LATE_S = 1.2
RESPONSE_GAP_S = (0.25, 0.45)  # cue word end -> response start
# Task "cuespeak_late": the response 0.5-0.7 s after the cue, still inside the graded window
# [cue_end, cue_end + LATE_S) (so the benchmark is unchanged). Why: the byte-level transcript of a
# heard word (model.user_speech_loss_weight) falls behind in a running word stream (4 USER_AUDIO
# positions, one byte each, per micro-turn), so a response at 0.25-0.45 s is often due before the
# model has written which word it heard (experiments/interaction_small/transcript_lag.json).
LATE_RESPONSE_GAP_S = (0.5, 0.7)
MIN_SPACING = 3  # distractor words between two cues


def generate(seed: int, *, duration_s: float, renderer: SpeechRenderer, instruction_mode: str = "mixed",
             response_gap_s: tuple[float, float] = RESPONSE_GAP_S) -> Episode:
    b = EpisodeBuilder("cuespeak", seed, duration_s, renderer, instruction_mode)
    rng = b.rng
    names = sorted(CATEGORIES)
    category = names[int(rng.integers(len(names)))]
    response = str(rng.choice(RESPONSES))
    text = f"Say {response} whenever I name {CATEGORY_PLURAL[category]}."
    ready = b.instruct(text, float(rng.uniform(0.3, 0.8)))
    # Distractors: fillers plus words of the other categories (near misses).
    distractors = list(FILLERS) + [w for c in names if c != category for w in CATEGORIES[c]]
    cues = CATEGORIES[category]
    n_words = int(rng.integers(18, 26))
    stream: list[str] = []
    is_cue: list[bool] = []
    since_cue = int(rng.integers(MIN_SPACING, MIN_SPACING + 3))  # a cue-free stretch first
    for _ in range(n_words):
        if since_cue >= MIN_SPACING and rng.random() < 0.3:
            stream.append(str(rng.choice(cues)))
            is_cue.append(True)
            since_cue = 0
        else:
            stream.append(str(rng.choice(distractors)))
            is_cue.append(False)
            since_cue += 1
    start = ready + float(rng.uniform(0.4, 0.9))
    words = b.user_says(" ".join(stream), start)
    busy_until = 0.0
    cue_ends: list[float] = []
    for w, cue in zip(words, is_cue):
        if not cue:
            continue
        # The sounding part of a cue ends at its word end (espeak word ends include no pause here).
        say_at = max(w.end + b.gap(*response_gap_s), busy_until + 0.1)
        if say_at >= b.duration:
            break
        said = b.model_says(response, say_at)
        busy_until = said[-1].end if said else say_at
        b.window("speak", w.end, max(w.end + LATE_S, say_at + 0.5), response)
        cue_ends.append(w.end)
    first_cue = next((w.start for w, c in zip(words, is_cue) if c), b.duration)
    b.window("silent", ready + MIN_LATENCY_S, first_cue)
    b.metadata.update(
        instruction_end=ready, category=category, response=response, cue_ends=cue_ends,
        stream_start=start,
    )  # fmt: skip
    return b.finish()
