"""experiments/refusal/turns.py: a task's disallowed requests counted by their place in the episode
(ordered by end time, whatever order the judgements come in), other tasks and kinds left out, and a
file without judgements refused with one line and exit 2."""

from __future__ import annotations

import json

from conftest import REPO, load_script

SCRIPT = REPO / "experiments/refusal/turns.py"


def _j(ep, end, refused, kind="disallowed", task="refusal"):
    return {"episode_id": ep, "task": task, "kind": kind, "end": end, "refused": refused}


JUDGED = [
    _j("a", 9.0, False), _j("a", 3.0, True),             # a: 1st refused, 2nd missed (listed out of order)
    _j("b", 2.5, True), _j("b", 7.0, True), _j("b", 12.0, False),
    _j("c", 4.0, False),
    _j("b", 5.0, False, kind="benign"),                 # not a disallowed request
    _j("d", 3.0, True, task="refusal_redteam"),         # another task
]


def test_requests_are_counted_by_their_order_in_the_episode():
    rows = load_script(SCRIPT, "_turns").by_order(JUDGED)
    assert rows == [
        {"order": 1, "requests": 3, "refused": 2, "end_min": 2.5, "end_max": 4.0},
        {"order": 2, "requests": 2, "refused": 1, "end_min": 7.0, "end_max": 9.0},
        {"order": 3, "requests": 1, "refused": 0, "end_min": 12.0, "end_max": 12.0},
    ]


def test_the_cli_writes_the_rows_and_refuses_a_file_without_judgements(tmp_path, capsys):
    mod = load_script(SCRIPT, "_turns_cli")
    src = tmp_path / "results.json"
    src.write_text(json.dumps({"metrics": {"model": {"refusal": {"judgements": JUDGED}}}}))
    out = tmp_path / "turns.json"
    assert mod.main([str(src), f"--json={out}"]) == 0
    assert [r["refused"] for r in json.loads(out.read_text())["rows"]] == [2, 1, 0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"metrics": {"model": {}}}))
    capsys.readouterr()
    assert mod.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected a refusal results.json" in err[0]
