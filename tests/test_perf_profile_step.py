# ruff: noqa: E501 - the HLO lines below are as XLA prints them
"""experiments/perf/profile_step.py: op attribution and self time on hand-written HLO and trace events."""

from __future__ import annotations

from conftest import REPO, load_script

ps = load_script(REPO / "experiments" / "perf" / "profile_step.py", "_perf_profile_step")

HLO = """\
%fused_computation.1 (param_0.1: f32[4,512,64], param_1.1: f32[4,64,2]) -> f32[4,512,2] {
  %param_0.1 = f32[4,512,64]{2,1,0} parameter(0)
  %param_1.1 = f32[4,64,2]{2,1,0} parameter(1)
  ROOT %dot.7 = f32[4,512,2]{2,1,0} dot(%param_0.1, %param_1.1), lhs_batch_dims={0}
}

ENTRY %main.9 (p0: f32[1,512,4,64]) -> f32[4,512,2] {
  %p0 = f32[1,512,4,64]{3,2,1,0} parameter(0)
  %copy_bitcast_fusion.3 = f32[4,512,64]{2,1,0} fusion(%p0), kind=kLoop, calls=%c, metadata={op_name="jit(stream_step)/model_call_29_30/attn/cache_read/while/body/squeeze"}
  %bitcast.2 = f32[4,64,2]{2,1,0} bitcast(%p0), metadata={op_name="jit(stream_step)/ffn/dot_general"}
  ROOT %ynn_fusion.5 = f32[4,512,2]{2,1,0} fusion(%copy_bitcast_fusion.3, %bitcast.2), kind=kCustom, calls=%fused_computation.1
  %sort.4 = f32[8]{0} sort(%p0), metadata={op_name="jit(stream_step)/sample_text/sort"}
}
"""


def test_parts_are_the_most_specific_scope_and_calls_name_positions():
    assert ps.part_of("jit(stream_step)/model_call_0_29/attn/cache_read/while") == "cache_read"
    assert ps.part_of("jit(stream_step)/model_call_0_29/attn/dot_general") == "attn"
    assert ps.part_of("jit(stream_step)/transpose") == "other"
    assert ps.call_of("jit(stream_step)/model_call_29_30/attn") == "positions 29-29"
    assert ps.call_of("jit(stream_step)/flow_sample/while") == "outside"


def test_a_fusion_without_metadata_takes_its_first_scoped_operand():
    parts = ps.op_parts(HLO)
    assert parts["copy_bitcast_fusion.3"] == ("cache_read", "positions 29-29")
    assert parts["ynn_fusion.5"] == ("cache_read", "positions 29-29")  # from its first operand
    assert parts["sort.4"] == ("sample_text", "outside")
    assert parts["p0"] == ("other", "outside")


def _ev(name, ts, dur, tid=1):
    return dict(ph="X", pid=7, tid=tid, ts=ts, dur=dur, name=name, args=dict(hlo_op=name))


def test_self_time_subtracts_nested_ops_on_the_same_thread_only():
    events = [_ev("while.1", 0, 100), _ev("dot.2", 10, 30), _ev("copy.3", 50, 20), _ev("dot.4", 120, 5),
              _ev("sort.5", 20, 60, tid=2),  # another thread: overlaps in time, nests in nothing
              dict(ph="X", pid=7, tid=1, ts=0, dur=500, name="ThunkExecutor::Execute", args={})]  # not an op
    got = dict(ps.self_times(events))
    assert got == {"while.1": 50, "dot.2": 30, "copy.3": 20, "dot.4": 5, "sort.5": 60}
    assert ps.kind_of("copy_bitcast_fusion.574") == "copy_bitcast_fusion"
    assert ps.kind_of("cond.691.clone") == "cond"
