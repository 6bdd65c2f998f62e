"""litgpt_mka.compare.records: the JSON form of the records, and the busy rule of a phase's load."""

import json

import pytest

from tests.compare.helpers import synthetic_run


def test_run_records_survive_their_json_form_and_missing_fields_are_named():
    from litgpt_mka.compare.records import Routing, RunResult, from_json, to_json

    run = synthetic_run("v", 1, 2.0, routing=Routing(["local", "session", "long_term"], [[0.5, 0.25, 0.25]], 96))
    assert from_json(RunResult, json.loads(json.dumps(to_json(run)))) == run
    broken = to_json(run)
    del broken["measure"]["kv_cache"]["bytes_at_context"]
    with pytest.raises(ValueError, match=r"RunResult\.measure\.kv_cache\.bytes_at_context is missing \(KVCacheSize requires it\)"):
        from_json(RunResult, broken)


def test_a_phase_is_busy_when_the_load_exceeds_its_threads_plus_half_a_cpu():
    from litgpt_mka.compare.records import PhaseLoad

    assert PhaseLoad(2.5, 2.4, threads=2, cpu_count=2).busy is False  # the run's own 2 threads: quiet
    assert PhaseLoad(0.1, 2.51, threads=2, cpu_count=2).busy is True
    assert PhaseLoad(1.6, None, threads=1, cpu_count=2).busy is True
    assert PhaseLoad(None, None, threads=1, cpu_count=2).busy is None
