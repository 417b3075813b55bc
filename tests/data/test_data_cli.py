"""The data commands through the real CLI entry point (`ettin.cli.main`)."""

import os
import shutil
import subprocess
import sys

import pytest

from ettin.data.order import OrderPlan, OrderWriter, PhasePlan, iter_order
from support import assert_one_line_error, run_in_process


def listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


def test_prepare_then_nothing_to_do(tmp_path, corpus_dir, small_tokenizer_dir):
    args = [
        "data",
        "prepare",
        "--source",
        f"plays=text:{corpus_dir / 'plays'}",
        "--tokenizer",
        small_tokenizer_dir,
        "--out",
        tmp_path / "d",
    ]
    code, out, _ = run_in_process(args)
    assert code == 0 and "plays: prepared: 6 documents" in out and str(tmp_path / "d" / "plays") in out
    code, out, _ = run_in_process(args)
    assert code == 0 and "plays: up to date" in out
    code, out, _ = run_in_process(["data", "inspect", tmp_path / "d", "--verify", "--tokenizer", small_tokenizer_dir])
    assert code == 0 and "sha256" in out and "ok" in out


@pytest.mark.parametrize("case", ["missing", "empty", "utf8", "jsonl"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, small_tokenizer_dir, case):
    if case == "missing":
        source, words = f"text:{tmp_path / 'nope'}", ["nope", "no such file"]
    elif case == "empty":
        (tmp_path / "e").mkdir()
        (tmp_path / "e" / "a.txt").write_text("\n  \n")
        source, words = f"text:{tmp_path / 'e'}", ["no text to prepare"]
    elif case == "utf8":
        (tmp_path / "u.txt").write_bytes(b"good text, then \xff\xfe and \xc3")
        source, words = f"text:{tmp_path / 'u.txt'}", ["u.txt", "3 byte(s) that are not UTF-8", "--on-error skip"]
    else:
        (tmp_path / "j.jsonl").write_text('{"text": "fine"}\n{"text": 5}\nnot json\n')
        source, words = f"jsonl:{tmp_path / 'j.jsonl'}", ["j.jsonl", "line(s) 2", "3 (not JSON"]
    out_dir = tmp_path / "out"
    code, _, err = run_in_process(
        ["data", "prepare", "--source", source, "--tokenizer", small_tokenizer_dir, "--out", out_dir]
    )
    assert_one_line_error(code, err, *words)
    assert not out_dir.exists()


def test_skip_mode_reports_counts(tmp_path, small_tokenizer_dir):
    (tmp_path / "u.txt").write_bytes(b"good text, then \xff\xfe and more words")
    code, out, _ = run_in_process(
        [
            "data",
            "prepare",
            "--source",
            f"text:{tmp_path / 'u.txt'}",
            "--on-error",
            "skip",
            "--tokenizer",
            small_tokenizer_dir,
            "--out",
            tmp_path / "out",
        ]
    )
    assert code == 0 and "replaced 2 byte(s) that are not UTF-8" in out


def test_tampered_shard_and_other_tokenizer(
    tmp_path, data_dir, corpus_dir, small_tokenizer_dir, modernbert_tokenizer_dir
):
    d = tmp_path / "d"
    shutil.copytree(data_dir, d)
    code, _, err = run_in_process(["data", "inspect", d, "--tokenizer", modernbert_tokenizer_dir])
    assert_one_line_error(code, err, "different tokenizer")
    before = listing(d)
    code, _, err = run_in_process(
        [
            "data",
            "prepare",
            "--source",
            f"more=text:{corpus_dir / 'plays'}",
            "--tokenizer",
            modernbert_tokenizer_dir,
            "--out",
            d,
        ]
    )
    assert_one_line_error(code, err, "another tokenizer", "--overwrite")
    assert listing(d) == before
    shard = d / "wiki" / "tokens-00000.npy"
    raw = bytearray(shard.read_bytes())
    raw[200] ^= 1
    shard.write_bytes(bytes(raw))
    assert run_in_process(["data", "inspect", d])[0] == 0  # sizes only
    code, _, err = run_in_process(["data", "inspect", d, "--verify"])
    assert_one_line_error(code, err, "tokens-00000.npy", "sha256")
    shard.write_bytes(bytes(raw[:-10]))
    code, _, err = run_in_process(["data", "inspect", d])
    assert_one_line_error(code, err, "tokens-00000.npy", "bytes")


def _record(folder, plan):
    with OrderWriter(folder, plan=plan) as w:
        for step, phase, samples in iter_order(plan):
            w.record(step, phase, samples)


def test_order_and_pair_verify(tmp_path, data_dir):
    plan = OrderPlan(
        21,
        [
            PhasePlan(
                "pretrain", {"dir": str(data_dir), "mixture": ["wiki", "plays"]}, seq_len=64, steps=4, batch_size=6
            )
        ],
    )
    _record(tmp_path / "run" / "encoder" / "data_order", plan)
    _record(tmp_path / "run" / "decoder" / "data_order", plan)
    code, out, _ = run_in_process(["pair", "verify", tmp_path / "run"])
    assert code == 0 and out.startswith("identical: 4 step(s), 24 sequences")
    code, out, _ = run_in_process(["data", "order", tmp_path / "run", "--step", 3])
    assert code == 0 and out.startswith("step 3 (pretrain): 6 sequences") and out.count("\n") == 7
    code, out, _ = run_in_process(["data", "order", tmp_path / "run", "--check"])
    assert code == 0 and "identical" in out
    code, out, _ = run_in_process(
        ["data", "order", tmp_path / "run", "--arch", "decoder", "--step", 2, "--export", tmp_path / "s.parquet"]
    )
    assert code == 0 and "wrote 6 row(s)" in out
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "s.parquet").column("step").to_pylist() == [2] * 6
    code, _, err = run_in_process(["data", "order", tmp_path / "run", "--step", 99])
    assert_one_line_error(code, err, "step 99 is not recorded")

    shutil.rmtree(tmp_path / "run" / "decoder")
    other = OrderPlan(22, plan.phases)
    _record(tmp_path / "run" / "decoder" / "data_order", other)
    code, out, _ = run_in_process(["pair", "verify", tmp_path / "run"])
    assert code == 1 and out.startswith("differ: step 1, sequence 0")
    code, _, err = run_in_process(["pair", "verify", tmp_path / "nothing"])
    assert_one_line_error(code, err, "no encoder data order")


def test_real_process_exit_code(tmp_path):
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ettin",
            "data",
            "prepare",
            "--source",
            f"jsonl:{tmp_path / 'x.jsonl'}",
            "--tokenizer",
            tmp_path,
            "--out",
            tmp_path / "out",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
