import json

from advisor.measure import LatencyStats
from advisor.trials import Trial, TrialLog


def _trial(i: int, status: str = "ok") -> Trial:
    latency = LatencyStats.from_samples([1.0 + i, 2.0 + i, 3.0 + i]) if status == "ok" else None
    return Trial(id=f"t{i}", backend="onnxruntime", target="cpu", config={"threads": i}, batch_size=1,
                 status=status, reason=None if status == "ok" else "boom", latency=latency,
                 max_abs_error=float("inf") if status == "rejected" else 0.0)


def test_json_round_trip():
    trial = _trial(3)
    assert Trial.from_dict(json.loads(json.dumps(trial.to_dict()))) == trial


def test_log_appends_and_reloads(tmp_path):
    log = TrialLog(tmp_path / "trials.jsonl")
    for i in range(3):
        log.append(_trial(i))
    log.append(_trial(9, "rejected"))
    again = TrialLog(tmp_path / "trials.jsonl")
    assert len(again) == 4 and again.get("t1") == _trial(1)
    assert again.get("t9").max_abs_error is None  # infinity is stored as null


def test_torn_last_line_is_skipped_and_appending_continues(tmp_path):
    path = tmp_path / "trials.jsonl"
    log = TrialLog(path)
    log.append(_trial(0))
    with open(path, "a") as handle:
        handle.write(json.dumps(_trial(1).to_dict())[:40])  # killed mid-write
    reloaded = TrialLog(path)
    assert [t.id for t in reloaded.all()] == ["t0"]
    reloaded.append(_trial(2))
    assert [t.id for t in TrialLog(path).all()] == ["t0", "t2"]
