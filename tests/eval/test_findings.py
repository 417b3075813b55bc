"""The report's findings: per task family and per cross-objective model, from paired intervals only."""

from ettin.eval.report import (
    CONTRADICTED,
    NOT_RESOLVED,
    REPRODUCED,
    cross_findings,
    family_findings,
    findings_lines,
    render_markdown,
)
from ettin.eval.result import Score, TaskResult

KINDS = {"c1": "classification", "c2": "classification", "r1": "retrieval", "g1": "generation", "g2": "generation"}


def _result(task: str, model: str, arch: str) -> dict:
    score = Score(
        "acc", 0.5, {"acc": 0.5}, 4, {"low": 0.2, "high": 0.8}, 0.25, "", "m", item_ids=[1, 2], per_item=[1, 0]
    )
    return TaskResult(task, KINDS[task], model, arch, "demo", 0, score=score).to_dict()


def _results(gaps: dict, vs_native: dict | None = None) -> dict:
    """gaps: task -> (low, high) of encoder - decoder; vs_native: task -> (low, high) of cross - native."""
    labels = {"encoder": "encoder", "decoder": "decoder"} | ({"encoder-to-decoder": "decoder"} if vs_native else {})
    models = {
        m: {"info": {"arch": a}, "results": {"tasks": {t: _result(t, m, a) for t in KINDS}}} for m, a in labels.items()
    }
    if vs_native:
        models["encoder-to-decoder"]["cross_of"] = "decoder"
        models["encoder-to-decoder"]["vs_native"] = {
            t: {"diff": (lo + hi) / 2, "low": lo, "high": hi} for t, (lo, hi) in vs_native.items()
        }
    return {
        "tasks": list(KINDS),
        "models": models,
        "pair": {
            "encoder": "encoder",
            "decoder": "decoder",
            "tasks": {t: {"diff": (lo + hi) / 2, "low": lo, "high": hi} for t, (lo, hi) in gaps.items()},
        },
    }


def test_a_family_needs_an_interval_excluding_zero():
    res = _results(
        {
            "c1": (0.01, 0.2),  # encoder ahead: as the paper
            "c2": (-0.1, 0.3),  # undecided: does not count
            "r1": (-0.3, -0.01),  # decoder ahead: opposite
            "g1": (-0.2, -0.05),  # decoder ahead: as the paper
            "g2": (0.02, 0.1),  # encoder ahead: opposite
        }
    )
    fam = family_findings(res)
    assert fam["classification"]["outcome"] == REPRODUCED and fam["classification"]["expected"] == ["c1"]
    assert fam["retrieval"]["outcome"] == CONTRADICTED and fam["retrieval"]["opposite"] == ["r1"]
    assert fam["generation"]["outcome"] == NOT_RESOLVED  # tasks disagree


def test_no_decided_task_is_not_resolved():
    fam = family_findings(_results({t: (-0.1, 0.1) for t in KINDS}))
    assert {f["outcome"] for f in fam.values()} == {NOT_RESOLVED}


def test_cross_objective_behind_native_reproduces_the_paper():
    res = _results({t: (-0.1, 0.1) for t in KINDS}, vs_native={"c1": (-0.3, -0.1), "g1": (-0.1, 0.1)})
    c = cross_findings(res)["encoder-to-decoder"]
    assert (c["behind"], c["ahead"], c["outcome"]) == (["c1"], [], REPRODUCED)
    res = _results({t: (-0.1, 0.1) for t in KINDS}, vs_native={"c1": (0.1, 0.3)})
    assert cross_findings(res)["encoder-to-decoder"]["outcome"] == CONTRADICTED


def test_findings_section_is_in_the_report():
    res = _results({"c1": (0.01, 0.2)}) | {"suite": "demo", "seed": 0}
    lines = findings_lines(res)
    assert lines[0] == "## Findings (paired intervals only)"
    assert "| classification | encoder ahead | c1, c2 | c1 | - | **reproduced** |" in lines
    assert "## Findings (paired intervals only)" in render_markdown(res)
