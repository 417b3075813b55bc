"""The released batch-order layout (jhu-clsp/ettin-data-order, written by bert24's data saver): read it,
replay it in training, and write ettin's own order in it. The files here are written with pyarrow the
way bert24's `OptimizedDataSaver` writes them (zstd, input_ids list<uint16>, step uint64, sequence_length)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ettin.data.order import read_order, release_files, release_step, release_summary
from support import assert_one_line_error, run_in_process

CLS, SEP, PAD, MASK = 1020, 1021, 1022, 1023
SEQ = 16


def write_release_file(folder: Path, steps: dict[int, list[list[int]]], width: int = SEQ) -> Path:
    """One file as bert24's saver writes it: the 2-D batches of several steps, padded to `width`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, step_col = [], []
    for step, seqs in steps.items():
        for s in seqs:
            rows.append(s + [PAD] * (width - len(s)))
            step_col.append(step)
    arr = np.asarray(rows, np.uint16)
    table = pa.Table.from_arrays(
        [pa.array([r.tolist() for r in arr], type=pa.list_(pa.uint16())), pa.array(np.asarray(step_col, np.uint64))],
        names=["input_ids", "step"],
        metadata={b"sequence_length": str(arr.shape[1]).encode()},
    )
    path = folder / f"steps_{min(steps):06d}_to_{max(steps):06d}.parquet"
    pq.write_table(table, path, compression="ZSTD", compression_level=10, use_dictionary=False)
    return path


def recorded_steps(n_steps: int, rows: int, seed: int = 0) -> dict[int, list[list[int]]]:
    rng = np.random.default_rng(seed)
    out = {}
    for step in range(1, n_steps + 1):
        seqs = []
        for _ in range(rows):
            body = rng.integers(0, 1000, size=int(rng.integers(3, SEQ - 1))).tolist()
            seqs.append([CLS, *body, SEP])
        out[step] = seqs
    return out


@pytest.fixture()
def release(tmp_path) -> tuple[Path, dict]:
    steps = recorded_steps(7, 4)
    root = tmp_path / "ettin-data-order"
    write_release_file(root / "checkpoint_000001", {s: steps[s] for s in (1, 2, 3)})
    write_release_file(root / "checkpoint_000001", {s: steps[s] for s in (4,)})
    write_release_file(root / "checkpoint_000002", {s: steps[s] for s in (5, 6, 7)})
    return root, steps


def test_release_layout_is_read_per_checkpoint_and_per_step(release):
    root, steps = release
    assert len(release_files(root)) == 3
    summary = release_summary(root)
    assert [(r["checkpoint"], r["files"], r["num_steps"], r["rows"]) for r in summary] == [
        ("checkpoint_000001", 2, 4, 16),
        ("checkpoint_000002", 1, 3, 12),
    ]
    assert summary[0]["sequence_length"] == [SEQ] and summary[1]["ids"] == 12 * SEQ
    assert release_step(root, 6) == [s + [PAD] * (SEQ - len(s)) for s in steps[6]]


def test_order_cli_shows_counts_and_decodes_a_step(release, small_tokenizer_dir):
    from ettin.tokenizer import load_tokenizer

    root, steps = release
    code, out, err = run_in_process(["data", "order", root])
    assert code == 0, err
    assert "2 checkpoint folder(s), 7 step(s), 28 sequences" in out
    assert "checkpoint_000002: 1 file(s), steps 5..7 (3), 12 sequences" in out
    code, out, err = run_in_process(["data", "order", root, "--step", 3, "--tokenizer", small_tokenizer_dir])
    assert code == 0, err
    tok = load_tokenizer(small_tokenizer_dir)
    first = tok.decode(steps[3][0] + [PAD] * (SEQ - len(steps[3][0])), skip_special_tokens=False)
    assert "step 3: 4 sequences of 16 ids" in out and repr(first[:160]) in out


def _train(tmp_path: Path, tokenizer: Path, data: Path, mixture: dict, order: dict | None, steps: int) -> Path:
    import torch

    from ettin.recipe import load_recipe
    from ettin.train.trainer import TrainOptions, train

    recipe = {
        "name": "release-test",
        "arch": "decoder",
        "model": {"size": "tiny", "max_position_embeddings": 64},
        "seed": 5,
        "precision": "fp32",
        "micro_batch_size": 2,
        "tokenizer": str(tokenizer),
        "data_dir": str(data),
        "checkpoint": {"every_tokens": 100},
        "phases": [
            {
                "name": "pretrain",
                "tokens": 10**6,
                "seq_len": SEQ,
                "batch_size": 4,
                "data": {"mixture": mixture, **({"order": order} if order else {})},
            }
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(
            load_recipe(path), TrainOptions(out=tmp_path / "run", progress=False, max_steps=steps, log=lambda m: None)
        )
    finally:
        torch.set_num_threads(before)
    return tmp_path / "run"


def test_replay_trains_on_exactly_the_recorded_rows_and_export_writes_them_back(release, small_tokenizer_dir, tmp_path):
    from ettin.data.prepare import prepare
    from ettin.runs import list_tags

    root, steps = release
    data = tmp_path / "data"
    prepare([f"rec=replay:{root}"], small_tokenizer_dir, data)
    run = _train(tmp_path, small_tokenizer_dir, data, {"rec": 1}, {"sampler": "replay"}, steps=7)
    rows = read_order(run, arch="decoder").to_pylist()
    for step, want in steps.items():
        assert [r["input_ids"] for r in rows if r["step"] == step] == want, step

    out = tmp_path / "exported"
    code, text, err = run_in_process(["data", "order", "export", run, out, "--layout", "ettin-release"])
    assert code == 0, err
    tags = sorted({t.step for t in list_tags(run / "decoder")})
    assert tags and tags[0] < 7
    files = release_files(out)
    assert {f.checkpoint for f in files} == {f"checkpoint_{i:06d}" for i in range(1, 1 + len({*tags, 7} - {0}))}
    first_folder = [f for f in files if f.checkpoint == "checkpoint_000001"]
    assert max(f.last_step for f in first_folder) == tags[0]
    for f in files:
        schema = pq.read_schema(f.path)
        assert schema.field("input_ids").type == pa.list_(pa.uint16()) and schema.field("step").type == pa.uint64()
        assert int(schema.metadata[b"sequence_length"]) == SEQ
        assert pq.ParquetFile(f.path).metadata.row_group(0).column(0).compression == "ZSTD"
    for step, want in steps.items():
        assert release_step(out, step) == [s + [PAD] * (SEQ - len(s)) for s in want]


def test_rows_with_mask_are_refused_for_replay(tmp_path, small_tokenizer_dir):
    steps = recorded_steps(3, 2)
    steps[2][1][3] = MASK
    root = tmp_path / "enc-order"
    write_release_file(root / "checkpoint_000001", steps)
    code, _, err = run_in_process(
        [
            "data",
            "prepare",
            "--source",
            f"rec=replay:{root}",
            "--tokenizer",
            small_tokenizer_dir,
            "--out",
            tmp_path / "d",
        ]
    )
    assert_one_line_error(code, err, "step 2 row 1", "[MASK]", "cannot be replayed")
    assert not (tmp_path / "d").exists()


def test_an_order_folder_of_another_layout_is_one_clear_error(tmp_path, small_tokenizer_dir):
    other = tmp_path / "data_order"
    other.mkdir()
    pq.write_table(pa.table({"step": [1], "input_ids": [[1, 2]]}), other / "part-0000000001.parquet")
    code, _, err = run_in_process(["data", "order", other, "--layout", "ettin-release"])
    assert_one_line_error(code, err, "not the ettin-release layout", "an ettin data order")
    code, _, err = run_in_process(
        [
            "data",
            "prepare",
            "--source",
            f"rec=replay:{other}",
            "--tokenizer",
            small_tokenizer_dir,
            "--out",
            tmp_path / "d",
        ]
    )
    assert_one_line_error(code, err, "not the ettin-release layout")
    assert not (tmp_path / "d").exists()
    bad = tmp_path / "rel" / "checkpoint_000001"
    bad.mkdir(parents=True)
    pq.write_table(pa.table({"tokens": [[1, 2]]}), bad / "steps_000001_to_000001.parquet")
    code, _, err = run_in_process(["data", "order", tmp_path / "rel"])
    assert_one_line_error(code, err, "not input_ids and step")
