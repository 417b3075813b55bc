import pyarrow.parquet as pq
import pytest

from ettin.data.order import (
    OrderPlan,
    OrderWriter,
    PhasePlan,
    compare_orders,
    iter_order,
    order_steps,
    read_order,
    read_plan,
    regenerate_order,
)
from ettin.errors import EttinError


def plan(data_dir, seed=21, steps=(6, 4)):
    mix = [{"source": "wiki", "weight": 0.6}, {"source": "plays", "weight": 0.4}]
    return OrderPlan(
        seed,
        [
            PhasePlan(
                "pretrain",
                {"dir": str(data_dir), "mixture": mix},
                seq_len=48,
                steps=steps[0],
                batch_size=8,
                warmup_tokens=600,
                warmup_start=2,
            ),
            PhasePlan(
                "extension", {"dir": str(data_dir), "mixture": ["plays"]}, seq_len=96, steps=steps[1], batch_tokens=700
            ),
        ],
    )


def record(folder, p, *, crash_after=None, flush_at=(), resume_from=None):
    """What a trainer does: record every step, flush before each checkpoint; optionally crash and resume."""
    writer = OrderWriter(folder, plan=p)
    if resume_from is not None:
        writer.truncate_after(resume_from)
    for step, phase, samples in iter_order(p):
        if resume_from is not None and step <= resume_from:
            continue
        writer.record(step, phase, samples)
        if step in flush_at:
            writer.flush()
        if crash_after is not None and step == crash_after:
            writer.flush()  # rows past the last checkpoint reached disk before the crash
            return
    writer.close()


def test_recorded_rows_and_step_lookup(tmp_path, data_dir):
    p = plan(data_dir)
    record(tmp_path / "o", p, flush_at={3, 7})
    table = read_order(tmp_path / "o")
    assert {"step", "input_ids", "phase", "source", "doc", "offset", "batch_hash"} <= set(table.column_names)
    steps = order_steps(tmp_path / "o")
    assert [s["step"] for s in steps] == list(range(1, 11))
    assert [s["phase"] for s in steps] == ["pretrain"] * 6 + ["extension"] * 4
    assert steps[0]["sequences"] == 2 and steps[5]["sequences"] == 8  # batch-size warmup
    assert all(s["tokens"] <= 700 for s in steps[6:])
    one = read_order(tmp_path / "o", step=4)
    assert set(one.column("step").to_pylist()) == {4} and one.column("seq").to_pylist() == list(range(one.num_rows))
    assert len(list((tmp_path / "o").glob("part-*.parquet"))) == 3


def test_regenerated_order_equals_recorded(tmp_path, data_dir):
    p = plan(data_dir)
    record(tmp_path / "o", p, flush_at={2, 5})
    assert regenerate_order(read_plan(tmp_path / "o")).equals(read_order(tmp_path / "o"))


def test_crash_and_resume_neither_duplicates_nor_loses_rows(tmp_path, data_dir):
    p = plan(data_dir)
    record(tmp_path / "clean", p)
    # checkpoint at step 4 (flush), crash at step 7 after rows 5..7 reached disk, resume from step 4
    record(tmp_path / "crashed", p, flush_at={4}, crash_after=7)
    assert order_steps(tmp_path / "crashed")[-1]["step"] == 7
    record(tmp_path / "crashed", p, resume_from=4)
    assert read_order(tmp_path / "crashed").equals(read_order(tmp_path / "clean"))
    writer = OrderWriter(tmp_path / "crashed")
    with pytest.raises(EttinError, match="already recorded"):
        writer.record(3, "pretrain", [])


def test_pair_verify(tmp_path, data_dir):
    p = plan(data_dir)
    for arch in ("encoder", "decoder"):
        record(tmp_path / "run" / arch / "data_order", p, flush_at={3} if arch == "encoder" else {6})
    result = compare_orders(tmp_path / "run" / "encoder", tmp_path / "run" / "decoder")
    assert result.identical and result.steps_a == 10
    # the decoder saw another seed from step 1 on: differs at the first step
    record(tmp_path / "run2" / "encoder" / "data_order", p)
    record(tmp_path / "run2" / "decoder" / "data_order", plan(data_dir, seed=5))
    result = compare_orders(tmp_path / "run2" / "encoder", tmp_path / "run2" / "decoder")
    assert not result.identical and result.first_step == 1 and result.first_seq == 0
    # one order stops early
    record(tmp_path / "run3" / "encoder" / "data_order", p)
    record(tmp_path / "run3" / "decoder" / "data_order", plan(data_dir, steps=(6, 2)))
    result = compare_orders(tmp_path / "run3" / "encoder", tmp_path / "run3" / "decoder")
    assert not result.identical and result.first_step == 9 and "one order only" in result.reason


def test_edited_rows_are_caught(tmp_path, data_dir):
    import pyarrow as pa

    p = plan(data_dir)
    record(tmp_path / "a", p)
    record(tmp_path / "b", p)
    part = next((tmp_path / "b").glob("part-*.parquet"))
    table = pq.read_table(part)
    ids = table.column("input_ids").to_pylist()
    ids[12][3] += 1
    table = table.set_column(table.column_names.index("input_ids"), "input_ids", pa.array(ids, pa.list_(pa.int32())))
    pq.write_table(table, part)
    with pytest.raises(EttinError, match="do not match their batch_hash"):
        compare_orders(tmp_path / "a", tmp_path / "b")


def test_token_phases_and_recipe_plan(tmp_path, data_dir):
    from types import SimpleNamespace

    from ettin.data.order import plan_from_recipe

    phase = SimpleNamespace(
        name="pretrain",
        data={"dir": str(data_dir), "mixture": [{"source": "wiki", "weight": 1.0}]},
        seq_len=64,
        tokens=3000,
        batch_size=8,
        batch_warmup_tokens=1000,
        batch_warmup_min=2,
        batch_warmup_shape="steps",
    )
    p = plan_from_recipe(SimpleNamespace(seed=3, micro_batch_size=2, phases=[phase]))
    assert p.phases[0].warmup_start == 2 and p.phases[0].tokens == 3000
    rows = regenerate_order(p)
    steps = order_steps_of(rows)
    tokens = [sum(n) for n in steps.values()]
    assert sum(tokens[:-1]) < 3000 <= sum(tokens)  # runs until the phase's tokens are reached
    assert len(next(iter(steps.values()))) == 2  # warmup from one micro-batch
    with pytest.raises(EttinError, match="exactly one of steps or tokens"):
        PhasePlan("x", phase.data, 64, steps=3, tokens=5, batch_size=2)


def order_steps_of(table):
    out = {}
    for step, length in zip(table.column("step").to_pylist(), table.column("length").to_pylist()):
        out.setdefault(step, []).append(length)
    return out
