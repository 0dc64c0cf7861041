"""Full-Duplex-Bench's own evaluation scripts run on `evaluate --export_fdb` exports, beside our numbers.

    python experiments/fdb_scoring/score.py --export=model=OUT [--export=oracle=OUT2] \
        --fdb_repo=Full-Duplex-Bench --python=FDB_VENV/bin/python --out=results.json [--offline_silero]

For every task root of every export (`OUT/<task>/<sample>/`) it runs, as subprocesses of
`--python` (an interpreter with FDB's requirements) in FDB's `v1_v1.5/evaluation/` folder:
`evaluate.py --task <task> --root_dir <copy of the root>` and `get_timing.py --root_dir <copy>`,
on a scratch copy of the root (FDB's scripts write `rating.json` / `latency_intervals.json` into
the sample folders; the export stays as it was). It parses what they print and write, and puts
beside them this project's own measures of the same samples (each sample's `timing.json`, written
by the export: FDB's turn rule re-implemented, this project's 3 s takeover rule, stop latency;
from the text stream and from a VAD on `output.wav`).

The v1.5 behaviour roots (`talking_to_other`, `background_speech`) are scored only with
`--judge=openai` (v1.5's `evaluate.py --task behavior`, a GPT judge; its printed ratios are kept);
otherwise they are listed in `skipped_v15_roots`.

FDB's `user_interruption` task rates relevance with GPT-4 (`evaluate.py` calls OpenAI before it
reads a file). Without `--judge=openai` the same FDB function `eval_user_interruption` is called
with a stand-in client that returns one fixed rating, so FDB's own code computes TOR and
latency; that rating is no judgement and is reported as null. Where an FDB script exits
non-zero (e.g. its mean over an empty list), the failure line is kept and the TOR is still read
from what it wrote (`rating.json` marks each sample it counted as a turn).

`--offline_silero`: `get_timing.py` loads Silero VAD with `torch.hub.load("snakers4/silero-vad")`,
which needs GitHub; this serves that name from a local hub folder whose `hubconf.py` returns the
model of the `silero-vad` package (which is built from that repository).
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from absl import flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from interaction_jax.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS
EVAL_DIR = os.path.join("v1_v1.5", "evaluation")
FDB_FILES = ("evaluate.py", "eval_smooth_turn_taking.py", "eval_user_interruption.py", "eval_pause_handling.py",
             "eval_backchannel.py", "get_timing.py", "icc_gt_distribution.json")
TIMING_TASKS = ("user_interruption", "smooth_turn_taking")  # get_timing.py's two-speaker latencies
V15_ONLY = ("talking_to_other", "background_speech")  # eval/fdb.py NAMED_ONLY: v1.5 behaviour roots
FDB_PACKAGES = ("torch", "torchaudio", "silero-vad", "scipy", "numpy", "openai", "python-dotenv", "tqdm")

# eval_user_interruption with a stand-in for the OpenAI client (argv: evaluation dir, root dir)
STUB_JUDGE = """
import sys, types
sys.path.insert(0, sys.argv[1])
from eval_user_interruption import eval_user_interruption
reply = "Analysis: not judged (no OpenAI access).\\nI would rate the AI's response as 0"
def create(**kwargs):
    return types.SimpleNamespace(choices=[types.SimpleNamespace(message=types.SimpleNamespace(content=reply))])
client = types.SimpleNamespace(chat=types.SimpleNamespace(completions=types.SimpleNamespace(create=create)))
eval_user_interruption(sys.argv[2], client)
"""

# hubconf.py of a local torch hub folder for "snakers4/silero-vad", from the silero-vad package
SILERO_HUBCONF = """
dependencies = ["torch"]


def silero_vad(onnx=False, **kwargs):
    from silero_vad import VADIterator, collect_chunks, get_speech_timestamps, load_silero_vad, read_audio, save_audio
    return load_silero_vad(onnx=onnx), (get_speech_timestamps, save_audio, read_audio, VADIterator, collect_chunks)
"""


class ScoreError(UserError, ValueError):
    """A --fdb_repo that is not a Full-Duplex-Bench checkout, or an --export that is not an export."""


def _define_flags() -> None:
    """Defined when run as a script, not on import (tests import the parsers)."""
    flags.DEFINE_multi_string("export", None, "An evaluate --export_fdb folder, NAME=DIR or DIR (name: its folder "
                              "name); repeat for several systems.", required=True)
    flags.DEFINE_string("fdb_repo", None, "A checkout of Full-Duplex-Bench (holding v1_v1.5/evaluation/).",
                        required=True)
    flags.DEFINE_string("out", os.path.join(HERE, "results.json"), "Where the results JSON goes.")
    flags.DEFINE_string("python", sys.executable, "Python with FDB's requirements (torch, torchaudio, silero-vad, "
                        "scipy, tqdm, openai, python-dotenv).")
    flags.DEFINE_enum("judge", "stub", ["stub", "openai"], "openai: FDB's evaluate.py with its OpenAI judge "
                      "(OPENAI_API_KEY, network), the v1.5 behaviour roots too; stub: user_interruption's eval "
                      "function with a stand-in judge (rating null), v1.5 behaviour roots skipped.")
    flags.DEFINE_bool("offline_silero", False, "Serve get_timing.py's torch.hub Silero VAD from the silero-vad "
                      "package (no network).")
    flags.DEFINE_integer("timeout", 1800, "Seconds per FDB script run.", lower_bound=1)


# ---- inputs --------------------------------------------------------------------------------------
def fdb_eval_dir(repo: str) -> str:
    """FDB's `v1_v1.5/evaluation` folder in `repo`; ScoreError when any script this needs is missing."""
    d = os.path.join(repo, EVAL_DIR)
    missing = [f for f in FDB_FILES if not os.path.isfile(os.path.join(d, f))]
    if missing:
        raise ScoreError(f"--fdb_repo={repo} is not a Full-Duplex-Bench checkout (no {EVAL_DIR}/{missing[0]}); "
                         "git clone https://github.com/DanielLin94144/Full-Duplex-Bench")
    return d


def fdb_commit(repo: str) -> str | None:
    out = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() if out.returncode == 0 else None


def parse_exports(specs: Sequence[str]) -> dict[str, str]:
    """{system name: export folder} from NAME=DIR or DIR entries."""
    out: dict[str, str] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        name = name or os.path.basename(os.path.normpath(path))
        if name in out:
            raise ScoreError(f"--export: system name {name!r} given twice")
        out[name] = path
    return out


def export_roots(export: str) -> dict[str, str]:
    """{FDB task: task root} of an export; ScoreError when it is not one (no task root, or a root FDB cannot read)."""
    from interaction_jax.eval.fdb import FdbError, detect_task, task_roots

    if not os.path.isdir(export):
        raise ScoreError(f"--export={export} is not a folder (expected evaluate --export_fdb output)")
    try:
        roots = {detect_task(r): r for r in task_roots(export)}
    except FdbError as e:
        raise ScoreError(f"--export={export} is not a Full-Duplex-Bench export: {e}") from None
    for task, r in roots.items():
        no_out = [s for s in sorted(os.listdir(r)) if not s.startswith(".")
                  and not os.path.isfile(os.path.join(r, s, "output.json"))]
        if no_out:
            raise ScoreError(f"--export={export} is not a Full-Duplex-Bench export: {task} sample {no_out[0]!r} "
                             "has no output.json")
    return roots


# ---- parsing what FDB's scripts print ------------------------------------------------------------
_NUM = r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|None|nan)"


def _num(s: str | None) -> float | None:
    return None if s in (None, "None", "nan") else float(s)


def parse_fdb_output(text: str) -> dict:
    """The numbers FDB's evaluate.py prints for any v1 task (missing ones are absent).

    Turn taking prints per sample `<path>/output.json`, `the TOR is X`, `the latency is Y`, then
    `Average take turn:  X` / `Average latency:  Y` (interruption adds `Average rating:`); the
    backchannel script prints `JSD - Mean: m ± s`, `TOR - Mean: ...`, `Frequency - Mean: ...`.
    """
    out: dict = {}
    for key, label in (("rating", "Average rating"), ("take_turn", "Average take turn"),
                       ("latency_mean_s", "Average latency")):
        m = re.search(rf"^{label}:\s+{_NUM}\s*$", text, re.M)
        if m:
            out[key] = _num(m.group(1))
    for key, label in (("jsd", "JSD"), ("tor", "TOR"), ("frequency", "Frequency")):
        m = re.search(rf"^{label} - Mean:\s+{_NUM}\s+±\s+{_NUM}\s*$", text, re.M)
        if m:
            out[f"{key}_mean"], out[f"{key}_std"] = _num(m.group(1)), _num(m.group(2))
    m = re.search(r"^Number of samples:\s+(\d+)\s*$", text, re.M)
    if m:
        out["samples"] = int(m.group(1))
    per = re.findall(rf"^(\S*output\.json)\nthe TOR is {_NUM}\nthe latency is {_NUM}$", text, re.M)
    if per:
        out["per_sample"] = {os.path.basename(os.path.dirname(p)): {"tor": int(float(t)), "latency_s": _num(lat)}
                             for p, t, lat in per}
    return out


def parse_behavior_output(text: str) -> dict:
    """v1.5's `evaluate.py --task behavior` prints `Ratios (C-axis): {...}` (the judged share of each behaviour
    class); kept as that dict where it parses, else as the printed text."""
    m = re.search(r"^Ratios \(C-axis\):\s*(.+?)\s*$", text, re.M)
    if not m:
        return {}
    try:
        value = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return {"behavior_ratios_text": m.group(1)}
    return {"behavior_ratios": value} if isinstance(value, dict) else {"behavior_ratios_text": m.group(1)}


def failure_line(stderr: str) -> str | None:
    """The last line of a Python traceback (`ZeroDivisionError: division by zero`), if there is one."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if re.match(r"^[A-Za-z_.]+(Error|Exception)\b", ln)),
                lines[-1] if lines else None)


def _stats(xs: Sequence[float]) -> dict:
    xs = [float(x) for x in xs if x is not None]
    return {"n": len(xs), "mean": round(statistics.fmean(xs), 4) if xs else None,
            "median": round(statistics.median(xs), 4) if xs else None}


def read_timing_intervals(root: str) -> dict:
    """get_timing.py's `latency_intervals.json` over a root: how long each overlap / response gap lasts."""
    stops, gaps, n = [], [], 0
    for path in sorted(glob.glob(os.path.join(root, "*", "latency_intervals.json"))):
        with open(path) as f:
            d = json.load(f)
        n += 1
        stops += [e - s for s, e in d.get("latency_stop_list", [])]
        gaps += [e - s for s, e in d.get("latency_resp_list", [])]
    return {"samples": n, "overlap_s": _stats(stops), "response_gap_s": _stats(gaps)}


# ---- our own numbers -----------------------------------------------------------------------------
def ours(root: str) -> dict:
    """This project's measures of a root's samples, from their `timing.json` (text stream and audio VAD)."""
    ts = []
    for path in sorted(glob.glob(os.path.join(root, "*", "timing.json"))):
        with open(path) as f:
            ts.append((os.path.basename(os.path.dirname(path)), json.load(f)["metrics"]))
    out: dict = {"samples": len(ts)}
    for src in ("text", "audio"):
        ms = [m[src] for _, m in ts]
        rec = {"fdb_rule_take_turn": _rate([m.get("fdb_take_turn") for m in ms]),
               "fdb_rule_latency_s": _stats([m.get("fdb_latency_s") for m in ms]),
               "takeover_3s_rate": _rate([m.get("response_latency_s") is not None for m in ms
                                          if "response_latency_s" in m]),
               "response_latency_s": _stats([m.get("response_latency_s") for m in ms]),
               "first_onset_s": _stats([m.get("first_onset_s") for m in ms])}
        if any("stop_latency_s" in m for m in ms):
            rec["speaking_at_interrupt_rate"] = _rate([m.get("speaking_at_interrupt") for m in ms])
            rec["stop_latency_s"] = _stats([m.get("stop_latency_s") for m in ms])
        out[src] = rec
    out["per_sample_fdb_rule_take_turn_text"] = {sid: m["text"].get("fdb_take_turn") for sid, m in ts}
    return out


def _rate(xs: Sequence) -> float | None:
    xs = [float(x) for x in xs if x is not None]
    return round(sum(xs) / len(xs), 4) if xs else None


# ---- running FDB ---------------------------------------------------------------------------------
def _run(cmd: list[str], cwd: str, env: dict, timeout: int) -> dict:
    shown = [c if "\n" not in c else "<code>" for c in cmd]
    print("[fdb_scoring] " + " ".join(shown), flush=True)
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "stdout": "", "stderr": f"timed out after {timeout} s"}
    return {"returncode": p.returncode, "stdout": p.stdout, "stderr": p.stderr}


def _silero_home(tmp: str) -> str:
    repo = os.path.join(tmp, "torch_home", "hub", "snakers4_silero-vad_master")
    os.makedirs(repo, exist_ok=True)
    with open(os.path.join(repo, "hubconf.py"), "w") as f:
        f.write(SILERO_HUBCONF)
    return os.path.join(tmp, "torch_home")


def score_root(task: str, root: str, *, eval_dir: str, python: str, env: dict, judge: str, timeout: int,
               tmp: str) -> dict:
    """FDB's numbers for one task root (run on a scratch copy), with the command lines and any failure."""
    work = os.path.join(tmp, "roots", f"{len(os.listdir(os.path.join(tmp, 'roots')))}", task)
    shutil.copytree(root, work)
    if task == "user_interruption" and judge == "stub":
        cmd = [python, "-c", STUB_JUDGE, eval_dir, work]
        shown = f"{os.path.basename(python)} -c <eval_user_interruption with a stand-in judge> {task}/"
    elif task in V15_ONLY:  # v1.5's GPT-judged behaviour script (main() only calls it with --judge=openai)
        cmd = [python, "evaluate.py", "--task", "behavior", "--root_dir", work]
        shown = f"python evaluate.py --task behavior --root_dir {task}/"
    else:
        cmd = [python, "evaluate.py", "--task", task, "--root_dir", work]
        shown = f"python evaluate.py --task {task} --root_dir {task}/"
    r = _run(cmd, eval_dir, env, timeout)
    res = {"command": shown, "returncode": r["returncode"], **parse_fdb_output(r["stdout"])}
    if task in V15_ONLY:
        res.update(parse_behavior_output(r["stdout"]))
    if r["returncode"] != 0:
        res["failure"] = failure_line(r["stderr"])
    if task == "user_interruption":
        n = len([s for s in os.listdir(work) if os.path.isdir(os.path.join(work, s))])
        judged = len(glob.glob(os.path.join(work, "*", "rating.json")))  # FDB writes one per sample with TOR 1
        res["take_turn_from_rating_files"] = round(judged / n, 4) if n else None
        if judge == "stub":
            res["rating"] = None  # the stand-in's fixed reply, not a judgement
    out = {"fdb": res}
    if task in TIMING_TASKS:
        t = _run([python, "get_timing.py", "--root_dir", work], eval_dir, env, timeout)
        out["get_timing"] = {"command": f"python get_timing.py --root_dir {task}/", "returncode": t["returncode"],
                             **read_timing_intervals(work)}
        if t["returncode"] != 0:
            out["get_timing"]["failure"] = failure_line(t["stderr"])
    return out


def _versions(python: str) -> dict:
    code = ("import importlib.metadata as m, json, sys\nout = {}\nfor p in sys.argv[1:]:\n    try: out[p] = "
            "m.version(p)\n    except m.PackageNotFoundError: out[p] = None\nprint(json.dumps(out))")
    p = subprocess.run([python, "-c", code, *FDB_PACKAGES], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise ScoreError(f"--python={python} does not run ({failure_line(p.stderr)})")
    return json.loads(p.stdout)


def agreement(fdb_per_sample: dict, ours_per_sample: dict) -> dict | None:
    """Samples where FDB's printed TOR equals our re-implementation of its rule on the same output.json."""
    both = [s for s in fdb_per_sample if ours_per_sample.get(s) is not None]
    if not both:
        return None
    same = [s for s in both if fdb_per_sample[s]["tor"] == ours_per_sample[s]]
    return {"samples": len(both), "same_tor": len(same), "differ": sorted(set(both) - set(same))}


# ---- table ---------------------------------------------------------------------------------------
def _f(v, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def table(systems: dict) -> str:
    head = ("| system | task | n | FDB TOR | FDB latency mean (s) | ours, FDB's rule: TOR / latency mean (text) | "
            "ours: takeover <3 s (text) | ours: latency median (text / audio, s) | get_timing resp. gap median (s) |")
    rows = [head, "|" + " --- |" * 9]
    behaviour = []
    for name, tasks in systems.items():
        for task, r in tasks.items():
            if task in V15_ONLY:  # v1.5's judged behaviour classes: no v1 turn, a table of their own
                ratios = r["fdb"].get("behavior_ratios", r["fdb"].get("behavior_ratios_text"))
                behaviour.append(f"| {name} | {task} | {r['fdb'].get('failure') or ratios} |")
                continue
            f, o, g = r["fdb"], r["ours"], r.get("get_timing", {})
            tor = f.get("take_turn", f.get("tor_mean"))
            if tor is None:
                tor = f.get("take_turn_from_rating_files")
            rows.append(f"| {name} | {task} | {o['samples']} | {_f(tor)} | {_f(f.get('latency_mean_s'))} | "
                        f"{_f(o['text']['fdb_rule_take_turn'])} / {_f(o['text']['fdb_rule_latency_s']['mean'])} | "
                        f"{_f(o['text']['takeover_3s_rate'])} | "
                        f"{_f(o['text']['response_latency_s']['median'])} / "
                        f"{_f(o['audio']['response_latency_s']['median'])} | "
                        f"{_f(g.get('response_gap_s', {}).get('median'))} |")
    if behaviour:
        rows += ["", "| system | v1.5 root | `evaluate.py --task behavior` ratios (C-axis) |", "| --- | --- | --- |",
                 *behaviour]
    return "\n".join(rows)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise ScoreError(f"unexpected arguments {argv[1:]}: score.py takes only flags")
    eval_dir = os.path.abspath(fdb_eval_dir(FLAGS.fdb_repo))
    exports = {n: os.path.abspath(p) for n, p in parse_exports(FLAGS.export).items()}
    roots = {n: export_roots(p) for n, p in exports.items()}  # every export checked before anything runs
    versions = _versions(FLAGS.python)
    systems: dict = {}
    with tempfile.TemporaryDirectory(prefix="fdb_scoring_") as tmp:
        os.makedirs(os.path.join(tmp, "roots"))
        env = dict(os.environ)
        if FLAGS.offline_silero:
            env["TORCH_HOME"] = _silero_home(tmp)
        skipped: dict = {}
        for name, task_roots in roots.items():
            systems[name] = {}
            for task, root in sorted(task_roots.items()):
                if task in V15_ONLY and FLAGS.judge != "openai":  # v1.5 behaviour roots need the GPT judge
                    skipped.setdefault(name, []).append(task)
                    print(f"[fdb_scoring] {name}/{task}: a v1.5 root (scored by v1.5's `evaluate.py --task "
                          "behavior`, which needs an OpenAI judge); not scored here", flush=True)
                    continue
                r = score_root(task, root, eval_dir=eval_dir, python=FLAGS.python, env=env, judge=FLAGS.judge,
                               timeout=FLAGS.timeout, tmp=tmp)
                if task not in V15_ONLY:  # ours: the v1 turn measures; v1.5 roots have no v1 turn to time
                    r["ours"] = ours(root)
                    r["tor_agreement"] = agreement(r["fdb"].get("per_sample", {}),
                                                   r["ours"].pop("per_sample_fdb_rule_take_turn_text"))
                systems[name][task] = r
    result = {
        "fdb_repository": "https://github.com/DanielLin94144/Full-Duplex-Bench",
        "fdb_commit": fdb_commit(FLAGS.fdb_repo),
        "fdb_packages": versions, "judge": FLAGS.judge, "offline_silero": FLAGS.offline_silero,
        "command": "python experiments/fdb_scoring/score.py " + " ".join(
            f"--export={n}=<{n} export>" for n in exports) + f" --fdb_repo=<Full-Duplex-Bench> --judge={FLAGS.judge}"
            + (" --offline_silero" if FLAGS.offline_silero else ""),
        "exports": {n: {t: len([s for s in os.listdir(r) if not s.startswith(".")]) for t, r in sorted(rs.items())}
                    for n, rs in roots.items()},
        "systems": systems,
        "skipped_v15_roots": skipped,
    }  # fmt: skip
    result["table"] = table(systems)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    tmp_out = FLAGS.out + ".tmp"
    with open(tmp_out, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp_out, FLAGS.out)
    print("\n" + result["table"] + "\n")
    print(f"[fdb_scoring] wrote {FLAGS.out}")


if __name__ == "__main__":
    from interaction_jax import cli

    cli.run(main, name="fdb_scoring", define_flags=_define_flags)
