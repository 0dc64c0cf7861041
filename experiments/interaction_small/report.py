"""results.json and results.md of the reproduction experiment, from the stages' saved outputs.

    python experiments/interaction_small/run.py --stages=report

`results.json` holds every metric (test range: model, turn-based cascade, oracle; typed and
spoken instructions), the validation choice of decoding settings, the learning curve, the
config, commit, hardware, wall times and the command. `results.md` and `figures/` are generated
from it; nothing in them is typed by hand.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

# (key, label, target, direction): direction ">=" or "<=" against the target; None = reported only.
TARGETS = (
    ("timespeak_accuracy", "TimeSpeak accuracy", 0.80, ">="),
    ("cuespeak_accuracy", "CueSpeak accuracy", 0.70, ">="),
    ("cuespeak_false_alarm_rate", "CueSpeak false alarms", 0.10, "<="),
    ("interruption_stop_rate", "Interruption stop rate", 0.90, ">="),
    ("interruption_stop_latency_s", "Interruption stop latency, median (s)", 0.40, "<="),
    ("interruption_speaking_at_onset_rate", "Speaking at the interruption onset", 0.80, ">="),
    ("backchannel_false_stop_rate", "Backchannel false-stop rate", 0.10, "<="),
    ("talking_to_others_false_response_rate", "Talking to others: false response", 0.10, "<="),
    ("background_speech_false_response_rate", "Background speech: false response", 0.10, "<="),
    ("turn_taking_takeover_rate", "Turn-taking takeover", 0.90, ">="),
    ("turn_taking_latency_s", "Turn-taking response latency, median (s)", 0.40, "<="),
    ("turn_taking_answer_accuracy", "Turn-taking answer accuracy", 0.60, ">="),
    ("delegation_precision", "Delegation precision", 0.90, ">="),
    ("delegation_recall", "Delegation recall", 0.90, ">="),
    ("delegation_request_exact", "Delegation request exact", 0.80, ">="),
    ("delegation_result_spoken", "Delegation result spoken (computed results)", 0.70, ">="),
)
RATE_KEYS = [k for k, _, _, d in TARGETS if not k.endswith("_s")]


def headline(m: dict, live: dict | None) -> dict:
    """The target metrics of one system from evaluate's metrics (and the live-hub delegation summary)."""
    ts, cs, fd, dl = (m.get(b, {}) for b in ("timespeak", "cuespeak", "fd", "delegation"))
    n_int = fd.get("interruption_examples") or 0
    out = {
        "timespeak_accuracy": ts.get("accuracy"), "cuespeak_accuracy": cs.get("accuracy"),
        "cuespeak_false_alarm_rate": cs.get("false_alarm_rate"),
        "interruption_stop_rate": fd.get("interruption_stop_rate"),
        "interruption_stop_latency_s": fd.get("interruption_stop_latency_median_s"),
        "interruption_speaking_at_onset_rate": fd.get("interruption_speaking_at_onset", 0) / n_int if n_int else None,
        "interruption_speaking_at_onset": fd.get("interruption_speaking_at_onset"), "interruption_examples": n_int,
        "backchannel_false_stop_rate": fd.get("backchannel_false_stop_rate"),
        "talking_to_others_false_response_rate": fd.get("talking_to_others_false_response_rate"),
        "background_speech_false_response_rate": fd.get("background_speech_false_response_rate"),
        "turn_taking_takeover_rate": fd.get("turn_taking_takeover_rate"),
        "turn_taking_latency_s": fd.get("turn_taking_latency_median_s"),
        "turn_taking_answer_accuracy": fd.get("turn_taking_answer_accuracy"),
        # scripted background (the episode's own result): the cascade's column; the live hub's below
        "delegation_precision": dl.get("delegation_precision"), "delegation_recall": dl.get("delegation_recall"),
        "delegation_request_exact": dl.get("request_exact_match"), "delegation_result_spoken": None,
    }  # fmt: skip
    if live is not None:
        out.update(delegation_precision=live["precision"], delegation_recall=live["recall"],
                   delegation_request_exact=live["request_exact_match"],
                   delegation_result_spoken=live.get("computed_result_spoken_rate"))
    return out


def selection_score(h: dict) -> float:
    """Mean of the headline rates, each oriented so that higher is better (None skipped)."""
    vals = []
    for key, _, _, direction in TARGETS:
        v = h.get(key)
        if v is None or key not in RATE_KEYS:
            continue
        vals.append(v if direction == ">=" else 1.0 - v)
    return sum(vals) / len(vals) if vals else 0.0


def met(value, target: float, direction: str) -> bool | None:
    if value is None:
        return None
    return value >= target if direction == ">=" else value <= target


def _fmt(v, key: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:.2f} s" if key.endswith("_s") else f"{100 * v:.0f}%"


def _loss_plot(tb: str, path: str) -> str | None:
    from interaction_jax.train.metrics import read_scalars

    s = read_scalars(tb)
    if "loss" not in s:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for tag, style in (("text_loss", "-"), ("audio_loss", "-"), ("eval/text_loss", "o--"), ("eval/audio_loss", "o--")):
        if tag in s:
            steps, vals = zip(*s[tag], strict=True)
            ax.plot(steps, vals, style, label=tag, ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CURVE_KEYS = ("timespeak_accuracy", "cuespeak_accuracy", "interruption_stop_rate", "backchannel_false_stop_rate",
              "turn_taking_takeover_rate", "turn_taking_answer_accuracy", "delegation_recall",
              "delegation_request_exact")


def _curve_plot(curve: dict, path: str) -> str | None:
    pts = {int(k): v for k, v in curve.get("points", {}).items()}
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(pts)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for key in CURVE_KEYS:
        ys = [pts[s].get(key) for s in steps]
        if any(y is not None for y in ys):
            ax.plot(steps, [float("nan") if y is None else y for y in ys], "o-", ms=4,
                    label=dict((k, lab) for k, lab, _, _ in TARGETS)[key])
    ax.set_xlabel("training step")
    ax.set_ylabel("rate (validation seeds)")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.set_title(f"learning curves, {curve.get('examples_per_task')} validation episodes per task and checkpoint",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _hardware() -> dict:
    """results_io.hardware() (the evaluation's own record) plus the JAX version."""
    import jax

    from interaction_jax.results_io import hardware

    return {**hardware(), "jax": jax.__version__}


def build_results(config, workdir: str, timings: dict, command: str) -> dict:
    """Everything the report shows, from the saved stage outputs."""
    from interaction_jax.results_io import commit
    from interaction_jax.summary import count_params
    from interaction_jax.train.metrics import read_scalars

    ev = os.path.join(workdir, "eval")
    test = json.load(open(os.path.join(ev, "test.json")))
    select = json.load(open(os.path.join(ev, "select.json"))) if os.path.exists(os.path.join(ev, "select.json")) \
        else None
    curve = json.load(open(os.path.join(ev, "curve.json"))) if os.path.exists(os.path.join(ev, "curve.json")) else {}
    typed, spoken = test["typed"], test.get("spoken")
    systems = {}
    for system, m in typed["metrics"].items():
        live = test.get("delegation_live_typed") if system == "model" else None
        systems[system] = headline(m, live)
    spoken_h = {}
    if spoken:
        for system, m in spoken["metrics"].items():
            spoken_h[system] = headline(m, test.get("delegation_live_spoken") if system == "model" else None)
    fd_modes = {s: typed["metrics_by_mode"].get(s, {}).get("fd", {}) for s in typed["metrics"]}
    s = read_scalars(os.path.join(workdir, "run", "tb"))
    last = {k: v[-1] for k, v in s.items() if v}
    total, active = count_params(config)
    return {
        "command": command,
        "commit": commit(),
        "hardware": _hardware(),
        "wall_seconds": timings,
        "config": json.loads(config.to_json()),
        "params": {"total": total, "active": active},
        "training": {"steps": last.get("loss", (None,))[0], "final_loss": last.get("loss", (None, None))[1],
                     "final_text_loss": last.get("text_loss", (None, None))[1],
                     "final_eval_loss": last.get("eval/loss", (None, None))[1]},
        "decoding": {"temperature": typed["temperature"], "top_p": typed["top_p"], "self_audio": typed["self_audio"],
                     "selection": select},
        "test": {"examples_per_task": typed["num_examples"], "episode_seconds": typed["episode_seconds"],
                 "headline_typed": systems, "spoken": spoken_h, "fd_by_instruction_mode": fd_modes,
                 "delegation_live_typed": test.get("delegation_live_typed"),
                 "delegation_live_spoken": test.get("delegation_live_spoken"),
                 "metrics_typed": typed["metrics"], "metrics_spoken": spoken["metrics"] if spoken else None},
        "targets": [{"key": k, "label": lab, "target": t, "direction": d,
                     "model": systems.get("model", {}).get(k), "met": met(systems.get("model", {}).get(k), t, d)}
                    for k, lab, t, d in TARGETS],
        "curve": curve,
    }


def markdown(res: dict, figures: list[str]) -> str:
    sysnames = list(res["test"]["headline_typed"])
    h = res["test"]["headline_typed"]
    n_met = sum(1 for t in res["targets"] if t["met"])
    lines = [
        "# interaction_small: results",
        "",
        f"Generated from [`results.json`](results.json) by `report.py` (commit `{res['commit']}`). "
        f"Command: `{res['command']}`.",
        "",
        f"* model: {res['params']['total']:,} parameters; config [`config.py`](config.py); "
        f"{res['training']['steps']} steps; final train loss {res['training']['final_loss']:.3f}"
        if res["training"]["final_loss"] is not None else "* model: see config.py",
        f"* decoding: temperature {res['decoding']['temperature']}, top-p {res['decoding']['top_p']}, chosen on the "
        f"validation seeds with what the model hears of its own voice: `{res['decoding']['self_audio']}`",
        f"* test: {res['test']['examples_per_task']} episodes per task of {res['test']['episode_seconds']:.0f} s "
        "(benchmark test seeds; delegation seeds 3,100,000..), through the streaming Scheduler",
        f"* hardware: {res['hardware']['cpu_count']} CPUs ({res['hardware']['processor']}), JAX "
        f"{res['hardware']['jax']} on {res['hardware']['jax_backend']}",
        "* wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res["wall_seconds"].items()),
        "",
        f"## Targets (test seeds, typed instructions for copied content): {n_met} of {len(res['targets'])} met",
        "",
        "| metric | " + " | ".join(sysnames) + " | target | met |",
        "|---|" + "---|" * (len(sysnames) + 2),
    ]
    for t in res["targets"]:
        cells = [_fmt(h[s].get(t["key"]), t["key"]) for s in sysnames]
        ok = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['label']} | " + " | ".join(cells) + f" | {t['direction']} {_fmt(t['target'], t['key'])}"
                     f" | {ok} |")
    m = h.get("model", {})
    lines += ["", "Interruption examples with the model speaking at the onset: "
              f"{m.get('interruption_speaking_at_onset')} of {m.get('interruption_examples')}. "
              "Delegation rows of the model come from the live hub "
              "(`experiments/delegation/run.py`; result spoken counts calculator results only); the cascade's "
              "from the scripted background of the same episodes.", ""]
    sp = res["test"]["spoken"]
    if sp:
        lines += ["## Typed vs spoken instructions (model, test seeds)", "",
                  "| metric | typed | spoken |", "|---|---|---|"]
        for key in ("timespeak_accuracy", "cuespeak_accuracy", "cuespeak_false_alarm_rate", "delegation_recall",
                    "delegation_request_exact", "delegation_result_spoken"):
            label = dict((k, lab) for k, lab, _, _ in TARGETS)[key]
            lines.append(f"| {label} | {_fmt(m.get(key), key)} | {_fmt(sp.get('model', {}).get(key), key)} |")
        fdm = res["test"]["fd_by_instruction_mode"].get("model", {})
        for key, label in (("turn_taking_answer_accuracy", "Turn-taking answer accuracy"),
                           ("turn_taking_takeover_rate", "Turn-taking takeover"),
                           ("turn_taking_latency_median_s", "Turn-taking latency, median (s)")):
            if fdm:
                lines.append(f"| {label} | {_fmt(fdm.get('typed', {}).get(key), key)} | "
                             f"{_fmt(fdm.get('spoken', {}).get(key), key)} |")
        lines.append("")
    sel = res["decoding"]["selection"]
    if sel:
        lines += ["## Decoding settings (validation seeds)", "", "| temperature | self-audio | score |",
                  "|---|---|---|"]
        lines += [f"| {c['temperature']} | {c.get('self_audio', 'generated')} | {c['score']:.3f} |"
                  for c in sel["candidates"]]
        lines += ["", f"Score: {sel['score']}; {sel['examples_per_task']} validation episodes per task.", ""]
    for f in figures:
        lines += [f"![{os.path.splitext(f)[0]}](figures/{f})", ""]
    return "\n".join(lines)


def write_report(config, workdir: str, results_path: str, timings: dict, command: str) -> dict:
    res = build_results(config, workdir, timings, command)
    out_dir = os.path.dirname(os.path.abspath(results_path))
    fig_dir = os.path.join(out_dir, "figures")
    if os.path.isdir(fig_dir):
        for old in glob.glob(os.path.join(fig_dir, "*.png")):
            os.remove(old)  # figures are generated: the report owns this folder
    os.makedirs(fig_dir, exist_ok=True)
    figures = []
    if _curve_plot(res["curve"], os.path.join(fig_dir, "learning_curves.png")):
        figures.append("learning_curves.png")
    if _loss_plot(os.path.join(workdir, "run", "tb"), os.path.join(fig_dir, "loss.png")):
        figures.append("loss.png")
    for png in sorted(glob.glob(os.path.join(workdir, "eval", "test", "typed", "*.png")))[:8]:
        shutil.copy(png, fig_dir)
        figures.append(os.path.basename(png))
    for png in sorted(glob.glob(os.path.join(workdir, "eval", "test", "delegation_plots", "*.png")))[:2]:
        shutil.copy(png, fig_dir)
        figures.append(os.path.basename(png))
    res["figures"] = figures
    tmp = results_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, results_path)
    md = os.path.join(out_dir, "results.md")
    with open(md + ".tmp", "w") as f:
        f.write(markdown(res, figures))
    os.replace(md + ".tmp", md)
    print(f"[experiment] wrote {results_path} and {md}")
    return res
