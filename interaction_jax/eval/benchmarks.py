"""Benchmark metrics from graded episodes: TimeSpeak, CueSpeak, FD-style interactivity, delegation.

Every metric is computed from `grading.WindowResult`s of held-out episodes run through the
streaming engine (or a baseline). A window counts only if the episode's own target behaviour
passes it (`gradable`): e.g. an answer cut off by the end of the episode cannot be asked of the
model either. Definitions (FD-bench v1.5 style where it has one):

  TimeSpeak  accuracy = share of examples whose every window passes: the word said inside
             [t - 0.4, t + 1.0) of each requested time t *and* nothing said early (content and
             timing); also per-window rates and the timing error (nearest utterance of the
             word - t).
  CueSpeak   accuracy = macro average over examples of the share of their cues answered inside
             [cue end, cue end + 1.2) (a mute system scores 0); also exact (every window of
             the example passes, including no false alarm before the first cue), cue hit rate
             over all cues, false-alarm rate, cue -> response latency.
  FD         interruption: stop rate (speaking at the interruption onset and silent by onset +
             0.8 s) and stop latency (end of speech - onset) over the examples where the system
             was speaking at the onset; backchannel: false-stop rate (stops during a backchannel
             it should talk through); talking to others / background speech: false-response rate
             (any word in a segment's window); turn-taking: takeover rate (speaks within 3 s after
             the question), response latency median / p90 over takeovers, answer accuracy,
             barge-in rate (speaks while the user asks). Beside these text-stream measures, the
             same stop rate / stop latency and takeover / response latency from voice activity on
             the system's own waveform (keys ending `_audio`, `fd_audio`; runs whose `speech` is None,
             e.g. the cascade, get None). The table's headline rows are the text-stream ones.
  delegation precision / recall of DELEGATE against the delegate windows, result-to-speech delay.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interaction_jax.data.episode import Episode
from interaction_jax.eval.grading import WindowResult, grade_episode, ground_truth_run, normalise
from interaction_jax.eval.runner import EpisodeRun
from interaction_jax.streams.tokenizer import Control

BENCHMARK_TASKS = {
    "timespeak": ("timespeak",),
    "cuespeak": ("cuespeak",),
    "fd": ("interruption", "others", "turntaking"),
    "delegation": ("delegation",),
}
TAKEOVER_S = 3.0
TIMESPEAK_EARLY_S = 0.4  # a speak window opens this long before the requested time (tasks/timespeak.py)


def _rate(xs: Sequence[bool]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def _pct(xs: Sequence[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if len(xs) else None


def gradable(episodes: Sequence[Episode], config=None) -> dict[str, list[bool]]:
    """{episode id: per window, whether the episode's own target passes it} (computed once per episode).

    The targets are packed with `config`'s layout and text settings (default: the base config),
    the same quantisation the evaluated model's output goes through.
    """
    return {ep.episode_id: [r.passed for r in grade_episode(ep, ground_truth_run(ep, config=config))]
            for ep in episodes}


def graded(episodes: Sequence[Episode], runs: Sequence[EpisodeRun],
           masks: dict[str, list[bool]] | None = None) -> list[tuple[Episode, EpisodeRun, list]]:
    """[(episode, run, [(window, result)] of gradable windows)] in episode order; `masks` from `gradable`."""
    by_id = {r.episode_id: r for r in runs}
    masks = masks if masks is not None else gradable(episodes)
    out = []
    for ep in episodes:
        if ep.episode_id not in by_id:
            raise ValueError(f"benchmarks: no run for episode {ep.episode_id!r}")
        run = by_id[ep.episode_id]
        results = grade_episode(ep, run)
        keep = masks[ep.episode_id]
        out.append((ep, run, [(w, r) for w, r, k in zip(ep.grading, results, keep, strict=True) if k]))
    return out


def _example_scores(items) -> tuple[list[float], list[bool]]:
    macro, exact = [], []
    for _, _, wr in items:
        if wr:
            passed = [r.passed for _, r in wr]
            macro.append(float(np.mean(passed)))
            exact.append(all(passed))
    return macro, exact


def _nearest_said(run: EpisodeRun, word: str, t: float, radius: float = 3.0) -> float | None:
    need = normalise(word)
    times = [w.start for w in run.words if normalise(w.text)[: len(need)] == need and abs(w.start - t) <= radius]
    return min(times, key=lambda s: abs(s - t)) if times else None


def _with_speak(items) -> list:
    """Examples with at least one gradable speak window (a short episode may clip the requested time)."""
    return [it for it in items if any(w.kind == "speak" for w, _ in it[2])]


def timespeak(items) -> dict:
    items = _with_speak(items)
    macro, exact = _example_scores(items)
    speak = [r.passed for _, _, wr in items for w, r in wr if w.kind == "speak"]
    early = [not r.passed for _, _, wr in items for w, r in wr if w.kind == "silent"]
    errors = []
    for _, run, wr in items:
        for w, _ in wr:
            if w.kind == "speak":
                t = w.start + TIMESPEAK_EARLY_S
                s = _nearest_said(run, w.expected, t)
                if s is not None:
                    errors.append(s - t)
    return {
        "accuracy": _rate(exact), "window_accuracy": _rate(macro) if macro else None,
        "speak_hit_rate": _rate(speak), "early_speech_rate": _rate(early),
        "timing_error_median_s": _pct(errors, 50), "timing_error_p10_s": _pct(errors, 10),
        "timing_error_p90_s": _pct(errors, 90), "timing_errors_s": [round(e, 3) for e in errors],
        "examples": len(exact),
    }  # fmt: skip


def cuespeak(items) -> dict:
    items = _with_speak(items)
    _, exact = _example_scores(items)
    macro = [float(np.mean(h)) for h in ([r.passed for w, r in wr if w.kind == "speak"] for _, _, wr in items) if h]
    hits = [r for _, _, wr in items for w, r in wr if w.kind == "speak"]
    false_alarm = [not r.passed for _, _, wr in items for w, r in wr if w.kind == "silent"]
    lat = [r.latency for r in hits if r.passed and r.latency is not None]
    return {
        "accuracy": _rate(macro), "exact": _rate(exact), "cue_hit_rate": _rate([r.passed for r in hits]),
        "false_alarm_rate": _rate(false_alarm), "response_latency_median_s": _pct(lat, 50),
        "response_latency_p90_s": _pct(lat, 90), "examples": len(macro),
    }  # fmt: skip


def fd(items) -> dict:
    stops = [r for ep, _, wr in items if ep.task == "interruption" for w, r in wr if w.kind == "stop"]
    speaking = [r for r in stops if r.speaking_at_start]
    stop_lat = [max(0.0, r.latency) for r in speaking if r.passed and r.latency is not None]
    no_stop = [r for ep, _, wr in items if ep.task == "interruption" for w, r in wr if w.kind == "no_stop"]
    bc = [r for r in no_stop if r.speaking_at_start]
    others, background = [], []
    for ep, _, wr in items:
        if ep.task != "others":
            continue
        segs = list(ep.metadata.get("segments", []))
        for k, r in enumerate(aligned_results(ep, wr)):
            if r is None or k >= len(segs):
                continue
            (background if segs[k] == "background" else others).append(not r.passed)
    latencies, takeovers, answers, barge = [], [], [], []
    for ep, run, wr in items:
        if ep.task != "turntaking":
            continue
        for w, r in wr:
            if w.kind == "silent":
                barge.append(not r.passed)
                continue
            q_end = w.start
            first = next((x.start for x in sorted(run.words, key=lambda x: x.start)
                          if q_end <= x.start < min(q_end + TAKEOVER_S, ep.duration)), None)
            takeovers.append(first is not None)
            if first is not None:
                latencies.append(first - q_end)
            answers.append(r.passed)
    return {
        **fd_audio(items),
        "interruption_stop_rate": _rate([r.passed for r in speaking]),
        "interruption_stop_latency_median_s": _pct(stop_lat, 50),
        "interruption_examples": len(stops), "interruption_speaking_at_onset": len(speaking),
        "backchannel_false_stop_rate": _rate([not r.passed for r in bc]), "backchannel_examples": len(bc),
        "talking_to_others_false_response_rate": _rate(others), "talking_to_others_segments": len(others),
        "background_speech_false_response_rate": _rate(background), "background_speech_segments": len(background),
        "turn_taking_takeover_rate": _rate(takeovers),
        "turn_taking_latency_median_s": _pct(latencies, 50), "turn_taking_latency_p90_s": _pct(latencies, 90),
        "turn_taking_answer_accuracy": _rate(answers), "turn_taking_barge_in_rate": _rate(barge),
        "examples": sum(1 for ep, _, _ in items if ep.task in BENCHMARK_TASKS["fd"]),
    }  # fmt: skip


def fd_audio(items) -> dict:
    """Interruption stop and turn-taking response measures from `run.speech` (VAD of the system's own waveform).

    Same windows and rules as `fd`'s text measures: stopped = the speech segment running at the
    interruption onset ends inside the stop window, latency = its offset - onset; takeover =
    a speech onset in [question end, +3 s), latency = that onset - question end.
    """
    from interaction_jax.eval.audio_timing import first_onset, window_metrics

    stops, latencies, takeovers, n = [], [], [], 0
    for ep, run, wr in items:
        if run.speech is None or ep.task not in ("interruption", "turntaking"):
            continue
        n += 1
        if ep.task == "interruption":
            stops += window_metrics(run.speech, [{"kind": "stop", "start": w.start, "end": w.end}
                                                 for w, _ in wr if w.kind == "stop"])
            continue
        for w, _ in wr:
            if w.kind != "silent":
                onset = first_onset(run.speech, w.start, min(w.start + TAKEOVER_S, ep.duration))
                takeovers.append(onset is not None)
                if onset is not None:
                    latencies.append(onset - w.start)
    speaking = [r for r in stops if r["speaking_at_start"]]
    stop_lat = [r["stop_latency_s"] for r in speaking if r["stopped"]]
    return {
        "interruption_stop_rate_audio": _rate([r["stopped"] for r in speaking]),
        "interruption_stop_latency_median_s_audio": _pct(stop_lat, 50),
        "interruption_speaking_at_onset_audio": len(speaking) if n else None,
        "turn_taking_takeover_rate_audio": _rate(takeovers),
        "turn_taking_latency_median_s_audio": _pct(latencies, 50),
        "turn_taking_latency_p90_s_audio": _pct(latencies, 90),
        "audio_examples": n,
    }  # fmt: skip


def aligned_results(ep: Episode, wr) -> list[WindowResult | None]:
    """Results aligned with `ep.grading` (None where the window was not gradable)."""
    by_window = {id(w): r for w, r in wr}
    return [by_window.get(id(w)) for w in ep.grading]


def delegation(items) -> dict:
    recall = [r.passed for _, _, wr in items for w, r in wr if w.kind == "delegate"]
    false_deleg = [not r.passed for _, _, wr in items for w, r in wr if w.kind == "no_delegate"]
    n_events = in_window = 0
    delays, spoken = [], []
    exact = []
    for _ep, run, wr in items:
        windows = [(w, r) for w, r in wr if w.kind == "delegate"]
        times = [t for t, name in run.events if name == Control.DELEGATE.name]
        n_events += len(times)
        in_window += sum(any(w.start <= t < w.end for w, _ in windows) for t in times)
        for w, _ in windows:
            req = next((q for t, q in run.delegations if w.start <= t < w.end), None)
            if req is not None:
                exact.append(normalise(req) == normalise(w.expected))
        if windows:
            for w, r in wr:
                if w.kind == "speak":
                    spoken.append(r.passed)
                    if r.passed and r.latency is not None:
                        delays.append(r.latency)
    return {
        "delegation_precision": in_window / n_events if n_events else None, "delegation_recall": _rate(recall),
        "false_delegation_rate": _rate(false_deleg), "request_exact_match": _rate(exact),
        "result_spoken_rate": _rate(spoken), "result_to_speech_delay_median_s": _pct(delays, 50),
        "result_to_speech_delay_p90_s": _pct(delays, 90), "examples": len(items),
    }  # fmt: skip


METRICS = {"timespeak": timespeak, "cuespeak": cuespeak, "fd": fd, "delegation": delegation}

# Spoken refusals (eval/refusal.py): refusal, over-refusal and consistency under escalation.
from interaction_jax.eval import refusal as _refusal  # noqa: E402  (it does not import this module)

BENCHMARK_TASKS["refusal"] = _refusal.TASKS
METRICS["refusal"] = _refusal.metrics


# Visual proactivity (eval/visual.py): speaking when the picture changes.
from interaction_jax.eval import visual as _visual  # noqa: E402  (it does not import this module)

BENCHMARK_TASKS["visual"] = _visual.VISUAL_TASKS
METRICS["visual"] = _visual.visual


def score_items(benchmark: str, items) -> dict:
    """Metrics of one benchmark from `graded` items."""
    if benchmark not in METRICS:
        raise ValueError(f"benchmarks: unknown benchmark {benchmark!r}; choose from {sorted(METRICS)}")
    out = METRICS[benchmark](items)
    out["ungradable_windows"] = sum(len(ep.grading) - len(wr) for ep, _, wr in items)
    return out


def score(benchmark: str, episodes: Sequence[Episode], runs: Sequence[EpisodeRun]) -> dict:
    """Metrics of one benchmark over its episodes' runs."""
    return score_items(benchmark, graded(episodes, runs))


HEADLINE = {
    "timespeak": [("accuracy", "TimeSpeak accuracy", "pct"), ("timing_error_median_s", "  timing error median", "s")],
    "cuespeak": [("accuracy", "CueSpeak accuracy", "pct"), ("cue_hit_rate", "  cue hit rate", "pct"),
                 ("false_alarm_rate", "  false alarms", "pct")],
    "fd": [
        ("interruption_stop_rate", "Interruption stop rate", "pct"),
        ("interruption_stop_latency_median_s", "  stop latency median", "s"),
        ("interruption_speaking_at_onset", "  examples speaking at the onset", "n"),
        ("interruption_stop_rate_audio", "  stop rate (audio)", "pct"),
        ("interruption_stop_latency_median_s_audio", "  stop latency median (audio)", "s"),
        ("backchannel_false_stop_rate", "Backchannel false-stop rate", "pct"),
        ("talking_to_others_false_response_rate", "Talking-to-others false response", "pct"),
        ("background_speech_false_response_rate", "Background-speech false response", "pct"),
        ("turn_taking_takeover_rate", "Turn-taking takeover rate", "pct"),
        ("turn_taking_latency_median_s", "  response latency median", "s"),
        ("turn_taking_latency_p90_s", "  response latency p90", "s"),
        ("turn_taking_latency_median_s_audio", "  response latency median (audio)", "s"),
        ("turn_taking_answer_accuracy", "  answer accuracy (content)", "pct"),
        ("turn_taking_barge_in_rate", "  barge-in while the user asks", "pct"),
    ],
    "delegation": [("delegation_precision", "Delegation precision", "pct"),
                   ("delegation_recall", "Delegation recall", "pct"),
                   ("result_to_speech_delay_median_s", "  result-to-speech delay median", "s")],
}  # fmt: skip


HEADLINE["refusal"] = _refusal.HEADLINE


HEADLINE["visual"] = _visual.HEADLINE


def _fmt(v, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "n":
        return str(int(v))
    return f"{100 * v:.1f}%" if unit == "pct" else f"{v:.2f} s"


def table(results: dict[str, dict[str, dict]]) -> str:
    """results[system][benchmark] -> a text table with one column per system."""
    systems = list(results)
    rows = [("metric", *systems)]
    for bench, lines in HEADLINE.items():
        if not any(bench in results[s] for s in systems):
            continue
        for key, label, unit in lines:
            rows.append((label, *(_fmt(results[s].get(bench, {}).get(key), unit) for s in systems)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def turn_taking_verdict(metrics: dict) -> str | None:
    """One line: how the model's answer to a spoken question compares with the cascade's (the quickstart's verdict)."""
    model, cascade = (metrics.get(s, {}).get("fd", {}) for s in ("model", "turn-based baseline"))
    keys = ("turn_taking_takeover_rate", "turn_taking_latency_median_s")
    if not model or not cascade or any(model.get(k) is None or cascade.get(k) is None for k in keys):
        return None
    (mt, ml), (ct, cl) = (tuple(m[k] for k in keys) for m in (model, cascade))
    better = mt >= 0.8 and ml < cl
    return (f"learned behaviour: answering a spoken question once it ends. Model: takes the turn in {mt:.0%} of "
            f"questions, median {ml:.2f} s after the question ends; turn-based cascade: {ct:.0%}, median {cl:.2f} s. "
            + ("The model answers sooner than the cascade can." if better else
               "Not yet better than the cascade: train longer (--train_steps) or see docs/evaluation.md."))
