"""The benchmark's code paths on tiny shapes: inputs, FLOP counts, reports, CLI. No timing is asserted."""

import json

import pytest
import torch

from ettin.attention import window_mask
from ettin.bench import Spec, run
from ettin.bench.scaling import markdown, scaling
from ettin.bench.timing import measure_memory
from ettin.bench.workloads import attention_pairs, forward_flops, make_batch
from ettin.errors import EttinError
from support import run_in_process


def tiny(task="train", arch="encoder", **kw) -> Spec:
    return Spec(task=task, size="tiny", arch=arch, dtype="fp32", vocab_size=512, batch=3, min_len=20, max_len=90, **kw)


def test_spec_rejects_what_cannot_run():
    with pytest.raises(EttinError, match="generation needs a decoder"):
        Spec(task="generate", arch="encoder")
    with pytest.raises(EttinError, match="unknown benchmark task"):
        Spec(task="fly")
    if not torch.cuda.is_available():
        with pytest.raises(EttinError, match="no CUDA device"):
            Spec(device="cuda")


def test_lengths_are_spread_over_the_range_and_repeatable():
    spec = Spec(task="infer", size="tiny", batch=5, min_len=32, max_len=512)
    assert sorted(spec.lengths()) == [32, 152, 272, 392, 512]
    assert spec.lengths() == Spec(task="infer", size="tiny", batch=5, min_len=32, max_len=512).lengths()


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_padded_and_flat_batches_hold_the_same_tokens_and_labels(arch):
    spec = tiny(arch=arch)
    b = make_batch(spec, spec.config(), with_labels=True)
    mask = b.attention_mask.bool()
    assert torch.equal(b.padded_ids[mask], b.ids)
    if arch == "encoder":  # the same masked positions on both sides
        assert torch.equal(b.padded_labels[mask], b.labels)
        assert ((b.labels != -100) == (b.ids == spec.config().mask_token_id)).all()
    else:  # ettin's labels are shifted already; transformers shifts inside its loss
        first = b.seqs[0]
        assert b.labels[: len(first)].tolist() == first[1:].tolist() + [-100]
        assert torch.equal(b.padded_labels[mask], b.ids)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [None, 64])
@pytest.mark.parametrize("length", [1, 50, 65, 200])
def test_attention_pairs_count_the_mask(causal, window, length):
    mask = window_mask(length, window, causal, "cpu")
    if mask is None:
        mask = torch.ones(length, length, dtype=torch.bool)
        mask = mask.tril() if causal else mask
    assert attention_pairs(length, window, causal) == int(mask.sum())


def test_forward_flops_are_matmuls_plus_attention_plus_head():
    cfg = Spec(task="train", size="tiny", vocab_size=512).config()
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    matmul_params = layers * (4 * h * h + 3 * h * i)  # Wqkv, Wo, Wi, mlp.Wo
    n = 10  # shorter than the window: every layer attends to all n x n pairs
    assert forward_flops(cfg, [n], 0) == 2 * matmul_params * n + layers * 4 * h * n * n
    assert forward_flops(cfg, [n], 3) - forward_flops(cfg, [n], 0) == 3 * 2 * (h * h + h * 512)


@pytest.mark.parametrize(
    "task,arch", [("train", "encoder"), ("train", "decoder"), ("infer", "encoder"), ("generate", "decoder")]
)
def test_run_reports_both_sides_and_they_agree_in_fp32(task, arch):
    spec = tiny(task, arch, new_tokens=4)
    r = run(spec, repeats=1, warmup=1, memory=False, matmul_n=256)
    for side in ("ettin", "hf"):
        assert r[side]["median_s"] > 0 and r[side]["tokens_per_s"] > 0 and r[side]["mfu"] > 0
    assert r["ratio"] == pytest.approx(r["hf"]["median_s"] / r["ettin"]["median_s"])
    check = r["check"]
    if task == "train":
        assert check["abs_diff"] < 1e-4
    elif task == "infer":
        assert check["max_abs_diff"] < 1e-4
    else:
        assert check["tokens_equal"]
    json.dumps(r)  # the report is JSON as it stands


def test_memory_is_measured_in_a_fresh_process():
    m = measure_memory(tiny(), "ettin", steps=1)
    assert "error" not in m, m
    assert m["peak_rss_mb"] >= m["rss_before_mb"] > 0 and m["step_peak_mb"] >= 0


def test_cli_prints_json_reports():
    args = [
        "bench",
        "infer",
        "--size",
        "tiny",
        "--vs",
        "none",
        "--dtype",
        "fp32",
        "--batch",
        "2",
        "--min-len",
        "20",
        "--max-len",
        "40",
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--no-memory",
        "--json",
    ]
    code, out, err = run_in_process(args)
    assert code == 0, err
    reports = json.loads(out)
    assert [r["spec"]["arch"] for r in reports] == ["encoder"] and "hf" not in reports[0]


def test_cli_data_runs_the_packaged_benchmark(monkeypatch):
    """`ettin bench data` runs the module inside the package, so it works from an installed wheel."""
    import importlib.util
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda args: calls.append(args) or 0)
    code, out, err = run_in_process(["bench", "data", "--quick"])
    assert code == 0, err
    assert calls and calls[0][1:] == ["-m", "ettin.bench.data_path", "--quick"]
    assert importlib.util.find_spec("ettin.bench.data_path") is not None


def test_scaling_table_is_markdown():
    row = {
        "task": "train",
        "size": "demo",
        "seq": 128,
        "batch": 32,
        "ettin_s": 0.5,
        "hf_s": 1.0,
        "ratio": 2.0,
        "ettin_mb": 100.0,
        "hf_mb": None,
        "ettin_mfu": 0.1,
        "hf_mfu": 0.05,
    }
    text = markdown([row])
    assert "| train | demo | 128 | 32 | 0.500 | 1.000 | 2.00 | 100 | - | 10.0% | 5.0% |" in text


def test_openmp_wait_policy_respects_the_user_and_a_loaded_torch(monkeypatch):
    from ettin.omp import choose_wait_policy

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert choose_wait_policy().policy == "ACTIVE"  # torch is loaded here: too late to choose, the env stays
    monkeypatch.delenv("OMP_WAIT_POLICY")
    choice = choose_wait_policy("passive")
    assert (choice.policy, "too late" in choice.reason) == ("default", True)
    assert "OMP_WAIT_POLICY" not in __import__("os").environ


def test_openmp_wait_policy_order_before_torch_loads():
    """In a fresh process: the flag wins over the variable, the variable over the load check."""
    import subprocess
    import sys

    code = (
        "import os, sys; from ettin.omp import choose_wait_policy as c; "
        "os.environ['OMP_WAIT_POLICY'] = 'ACTIVE'; a = c(); b = c('passive'); "
        "print(a.policy, a.reason, '|', b.policy, b.reason, '|', os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ACTIVE OMP_WAIT_POLICY set by the user | PASSIVE --omp-wait | PASSIVE False"


def test_the_command_takes_omp_wait_and_refuses_a_bad_value():
    import subprocess
    import sys

    def ettin(*args):
        code = "import sys; from ettin.cli import main; sys.argv = ['ettin', *sys.argv[1:]]; main()"
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)

    ok = ettin("--omp-wait", "passive", "sizes", "--json")
    assert ok.returncode == 0 and ok.stdout.lstrip().startswith(("[", "{")), ok.stderr
    bad = ettin("--omp-wait", "sometimes", "sizes")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--omp-wait" in bad.stderr, bad.stderr


def test_scaling_quick_writes_the_table_and_its_json(tmp_path):
    out = scaling(tmp_path / "scaling.md", quick=True, repeats=1, memory=False)
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["task"], r["size"]) for r in rows] == [("train", "tiny"), ("infer", "tiny")]
    assert out.read_text().count("| tiny |") == 2
