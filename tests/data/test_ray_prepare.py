"""The Ray engine of `ettin data prepare` on a real local Ray cluster: the inputs read by Ray Data, the
same bytes as the local engine, resume after a failed task, a dead worker retried, and one clear line
for each bad input."""

import gzip
import hashlib
import importlib.util
import json
import socket
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ettin.data import ray_engine
from ettin.data.prepare import ShardCutter, prepare
from ettin.data.ray_engine import FAULT_ENV
from ettin.data.sources import SourceSpec
from ettin.errors import EttinError
from support import assert_one_line_error, run_in_process

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install -e '.[ray]')")
SHARD_TOKENS = 3000


def tree_hashes(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")}


def reference_cuts(lengths, shard_tokens):
    """The rule written as a plain loop: close before a document that does not fit, and when full."""
    cuts, fill, count = [], 0, 0
    for i, n in enumerate(lengths):
        if count and fill + n > shard_tokens:
            cuts.append(i)
            fill = count = 0
        fill, count = fill + n, count + 1
        if fill >= shard_tokens:
            cuts.append(i + 1)
            fill = count = 0
    if count:
        cuts.append(len(lengths))
    return cuts


@pytest.mark.parametrize("seed", range(20))
def test_shard_cuts_do_not_depend_on_batching(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.choice([0, 1, 5, 30, 99, 100, 101, 250], size=int(rng.integers(1, 300)))
    cutter, cuts, i = ShardCutter(100), [], 0
    while i < len(lengths):
        step = int(rng.integers(1, 40))
        cuts += cutter.feed(lengths[i : i + step])
        i += step
    cuts += cutter.close()
    assert cuts == reference_cuts(lengths.tolist(), 100)


def test_ray_not_installed_is_one_line(monkeypatch, tmp_path, corpus_dir, small_tokenizer_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the package
    code, _, err = run_in_process(
        ["data", "prepare", "-s", f"jsonl:{corpus_dir / 'wiki.jsonl'}", "--tokenizer", small_tokenizer_dir]
        + ["--out", tmp_path / "d", "--engine", "ray"]
    )
    assert_one_line_error(code, err, "needs Ray, which is not installed", "ettin[ray]")
    assert not (tmp_path / "d").exists()


def test_unreachable_address_is_one_line(tmp_path, corpus_dir, small_tokenizer_dir):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run_in_process(
        ["data", "prepare", "-s", f"jsonl:{corpus_dir / 'wiki.jsonl'}", "--tokenizer", small_tokenizer_dir]
        + ["--out", tmp_path / "d", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"]
    )
    if not HAVE_RAY:
        assert_one_line_error(code, err, "not installed")
    else:
        assert_one_line_error(code, err, f"cannot reach a Ray cluster at 127.0.0.1:{port}", "ray start --head")
    assert not (tmp_path / "d").exists()


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, corpus_dir):
    """Sources of every kind: a JSONL folder with a bad line, bad bytes (skipped and counted) and a
    gzipped file of two gzip members, plain text split at blank lines, a Parquet folder, a saved HF
    dataset and a single JSONL file."""
    import datasets

    root = tmp_path_factory.mktemp("ray-inputs")
    lines = (corpus_dir / "wiki.jsonl").read_text(encoding="utf-8").splitlines()
    (root / "jl" / "sub").mkdir(parents=True)
    for i in range(3):
        part = lines[i * 100 : (i + 1) * 100]
        if i == 1:
            part[5] = "{not json"
        data = "\n".join(part).encode()
        if i == 2:
            data = data.replace(b"the", b"th\xff", 1)
        (root / "jl" / ("sub" if i else "") / f"part{i}.jsonl").write_bytes(data + b"\n")
    members = [("\n".join(lines[300 + k * 40 : 340 + k * 40]) + "\n").encode() for k in range(2)]
    (root / "jl" / "sub" / "part3.jsonl.gz").write_bytes(b"".join(gzip.compress(m) for m in members))
    (root / "pq").mkdir()
    texts = [json.loads(line)["text"] for line in lines]
    for i in range(2):
        pq.write_table(
            pa.table({"body": texts[i * 150 : (i + 1) * 150], "n": list(range(150))}), root / "pq" / f"{i}.parquet"
        )
    datasets.Dataset.from_dict({"text": texts[:120]}).save_to_disk(str(root / "hf"))
    return [
        SourceSpec(kind="jsonl", path=str(root / "jl"), name="jl", on_error="skip"),
        SourceSpec(kind="text", path=str(corpus_dir / "plays"), name="plays", split="blank"),
        SourceSpec(kind="parquet", path=str(root / "pq"), name="pq", field="body"),
        SourceSpec(kind="hf", path=str(root / "hf"), name="hf"),
        SourceSpec(kind="jsonl", path=str(corpus_dir / "wiki.jsonl"), name="wiki"),
    ]


@pytest.fixture(scope="module")
def local_out(tmp_path_factory, inputs, small_tokenizer_dir):
    out = tmp_path_factory.mktemp("local") / "data"
    prepare(inputs, small_tokenizer_dir, out, shard_tokens=SHARD_TOKENS, batch_chars=20000)
    return out


@needs_ray
def test_same_bytes_as_local(ray_session, tmp_path, inputs, local_out, small_tokenizer_dir):
    out = tmp_path / "data"
    results = prepare(inputs, small_tokenizer_dir, out, shard_tokens=SHARD_TOKENS, engine="ray")
    assert [r.status for r in results] == ["prepared"] * len(inputs)
    manifest = json.loads((out / "jl" / "manifest.json").read_text())
    assert manifest["report"]["bad_lines"] == 1 and manifest["report"]["bad_line_refs"] == ["sub/part1.jsonl:6"]
    assert manifest["report"]["bad_utf8_bytes"] == 1 and len(manifest["shards"]) > 3
    for spec in inputs:
        assert tree_hashes(out / spec.name) == tree_hashes(local_out / spec.name), spec.name
    assert sorted(p.name for p in out.iterdir()) == sorted(s.name for s in inputs)  # no staging, no probes
    again = prepare(inputs[:1], small_tokenizer_dir, out, shard_tokens=SHARD_TOKENS, engine="ray")
    assert again[0].status == "up to date"


@pytest.fixture
def read_steps(monkeypatch):
    """Every dataset the Ray engine's read step builds (through the `read_dataset` seam), with its units."""
    built = []

    def recording(units, args, max_retries=ray_engine.MAX_RETRIES):
        ds = real(units, args, max_retries)
        built.append((ds, [u.index for u in units]))
        return ds

    real = ray_engine.read_dataset
    monkeypatch.setattr(ray_engine, "read_dataset", recording)
    return built


@needs_ray
def test_inputs_are_read_by_a_ray_data_pipeline(
    ray_session, read_steps, tmp_path, inputs, local_out, small_tokenizer_dir
):
    """Files come through Ray Data's binary-file reader, other kinds through from_items; the rows that
    prepare consumes are that pipeline's, one per read unit."""
    import ray.data

    jl, hf = inputs[0], inputs[3]
    prepare([jl, hf], small_tokenizer_dir, tmp_path / "d", shard_tokens=SHARD_TOKENS, engine="ray")
    (files_ds, files_units), (hf_ds, hf_units) = read_steps
    assert isinstance(files_ds, ray.data.Dataset) and isinstance(hf_ds, ray.data.Dataset)
    assert files_units == [0, 1, 2, 3] and hf_units == [0]
    files_stats, hf_stats = files_ds.stats(), hf_ds.stats()  # what ran: the executed operators
    assert "ReadBinary" in files_stats and "Map(tokenize_row)" in files_stats, files_stats
    assert "FromItems" in hf_stats or "from_items" in hf_stats.lower(), hf_stats
    assert "Map(tokenize_row)" in hf_stats, hf_stats
    for spec in (jl, hf):
        assert tree_hashes(tmp_path / "d" / spec.name) == tree_hashes(local_out / spec.name), spec.name


@needs_ray
def test_dead_worker_is_retried(ray_session, monkeypatch, tmp_path, inputs, local_out, small_tokenizer_dir):
    # the Ray Data task reading file 1 dies once, and so does the worker writing shard 1
    monkeypatch.setenv(FAULT_ENV, "unit=1:exit,shard=1:exit")
    (result,) = prepare(inputs[:1], small_tokenizer_dir, tmp_path / "d", shard_tokens=SHARD_TOKENS, engine="ray")
    assert result.status == "prepared"
    assert tree_hashes(tmp_path / "d" / "jl") == tree_hashes(local_out / "jl")


@needs_ray
def test_failed_run_resumes_without_redoing_finished_shards(
    ray_session, read_steps, monkeypatch, tmp_path, inputs, local_out, small_tokenizer_dir
):
    out = tmp_path / "d"
    monkeypatch.setenv(FAULT_ENV, "shard=2:raise")
    with pytest.raises(EttinError, match="rerun the same command to continue"):
        prepare(inputs[:1], small_tokenizer_dir, out, shard_tokens=SHARD_TOKENS, engine="ray")
    staging = out / ".jl.partial"
    assert not (out / "jl").exists() and not (staging / "manifest.json").exists()
    assert not list(staging.glob("*-00002.*")) and not list(staging.rglob("*.tmp"))  # nothing half-written
    finished = {p.name: p.stat().st_mtime_ns for p in staging.glob("tokens-*.npy")}
    assert len(finished) >= 3
    blocks = staging / "blocks"
    assert sorted(p.name for p in blocks.glob("unit-*.json")) == [f"unit-{i:05d}.json" for i in range(4)]
    monkeypatch.delenv(FAULT_ENV)
    assert [units for _, units in read_steps] == [[0, 1, 2, 3]]
    (blocks / "unit-00002.json").unlink()  # as if the read of file 2 had not finished
    (result,) = prepare(inputs[:1], small_tokenizer_dir, out, shard_tokens=SHARD_TOKENS, engine="ray")
    assert result.status == "resumed"
    assert [units for _, units in read_steps] == [[0, 1, 2, 3], [2]]  # finished files left out of the dataset
    assert {n: (out / "jl" / n).stat().st_mtime_ns for n in finished} == finished  # not redone
    assert tree_hashes(out / "jl") == tree_hashes(local_out / "jl")


@needs_ray
def test_local_engine_finishes_a_ray_partial(
    ray_session, monkeypatch, tmp_path, inputs, local_out, small_tokenizer_dir
):
    out = tmp_path / "d"
    monkeypatch.setenv(FAULT_ENV, "shard=2:raise")
    with pytest.raises(EttinError):
        prepare(inputs[:1], small_tokenizer_dir, out, shard_tokens=SHARD_TOKENS, engine="ray")
    monkeypatch.delenv(FAULT_ENV)
    (result,) = prepare(inputs[:1], small_tokenizer_dir, out, shard_tokens=SHARD_TOKENS)
    assert result.status == "resumed"
    assert tree_hashes(out / "jl") == tree_hashes(local_out / "jl")


@needs_ray
def test_bad_input_leaves_nothing(ray_session, tmp_path, corpus_dir, small_tokenizer_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EttinError, match="cannot write the output folder"):
        prepare([f"jsonl:{corpus_dir / 'wiki.jsonl'}"], small_tokenizer_dir, blocker / "out", engine="ray")
    with pytest.raises(EttinError, match="no such file or folder"):
        prepare([f"jsonl:file://{tmp_path}/no-such-folder"], small_tokenizer_dir, tmp_path / "o", engine="ray")
    with pytest.raises(EttinError, match="read by the Ray engine only"):
        prepare([f"jsonl:file://{tmp_path}"], small_tokenizer_dir, tmp_path / "o")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jsonl").write_text('{"text": "fine"}\n')
    (bad / "b.jsonl").write_text("{oops\n")
    with pytest.raises(EttinError, match="malformed JSONL line"):
        prepare([f"jsonl:{bad}"], small_tokenizer_dir, tmp_path / "o", engine="ray")
    assert not (tmp_path / "o").exists(), sorted(str(p) for p in (tmp_path / "o").rglob("*"))


@needs_ray
def test_url_source_gives_the_same_shards(ray_session, tmp_path, inputs, local_out, small_tokenizer_dir):
    """A folder read through pyarrow.fs by URL (file:// here; s3:// and gs:// take the same path)."""
    spec = inputs[0]
    url = SourceSpec(kind="jsonl", path=f"file://{spec.path}", name="jl", on_error="skip")
    (result,) = prepare([url], small_tokenizer_dir, tmp_path / "d", shard_tokens=SHARD_TOKENS, engine="ray")
    got, want = tree_hashes(tmp_path / "d" / "jl"), tree_hashes(local_out / "jl")
    assert {k: v for k, v in got.items() if k != "manifest.json"} == {
        k: v for k, v in want.items() if k != "manifest.json"
    }
    manifest = json.loads((tmp_path / "d" / "jl" / "manifest.json").read_text())
    local = json.loads((local_out / "jl" / "manifest.json").read_text())
    assert manifest["shards"] == local["shards"] and manifest["source"]["path"] == url.path
    raw_lines = (Path(spec.path) / "sub" / "part2.jsonl").read_bytes().split(b"\n")
    bad_line = next(i for i, line in enumerate(raw_lines, 1) if b"\xff" in line)  # where the fixture put it
    assert local["report"]["bad_utf8_files"] == [f"{spec.path}/sub/part2.jsonl:{bad_line}"]
    assert manifest["report"]["bad_utf8_files"] == [f"file://{spec.path}/sub/part2.jsonl:{bad_line}"]
    assert {k: v for k, v in manifest["report"].items() if k != "bad_utf8_files"} == {
        k: v for k, v in local["report"].items() if k != "bad_utf8_files"
    }


@needs_ray
def test_token_id_sources_give_the_same_shards_under_ray(ray_session, tmp_path, small_tokenizer_dir):
    """MDS input_ids are copied, not tokenized: the Ray engine prepares them as the local engine does."""
    mds = Path(__file__).parent / "fixtures" / "mds"
    sources = [f"u16=mds:{mds / 'u16-zstd'}", f"text=mds:{mds / 'text-only'}"]
    local = prepare(sources, small_tokenizer_dir, tmp_path / "local", shard_tokens=300)
    ray_out = prepare(sources, small_tokenizer_dir, tmp_path / "ray", shard_tokens=300, engine="ray")
    assert [r.status for r in local] == [r.status for r in ray_out] == ["prepared", "prepared"]
    for name in ("u16", "text"):
        assert tree_hashes(tmp_path / "ray" / name) == tree_hashes(tmp_path / "local" / name), name


@needs_ray
def test_error_in_a_read_task_is_one_line(ray_session, capfd, tmp_path, small_tokenizer_dir):
    """A user error found inside Ray Data's map (bytes that are not UTF-8) reaches the terminal as ettin's
    one line: no Ray Data progress bars, execution logs or task tracebacks, and nothing left behind."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("fine text\n")
    (bad / "b.txt").write_bytes(b"caf\xe9\n")
    capfd.readouterr()
    code, _, err = run_in_process(
        ["data", "prepare", "-s", f"text:{bad}", "--tokenizer", small_tokenizer_dir]
        + ["--out", tmp_path / "d", "--engine", "ray"]
    )
    assert_one_line_error(code, err, "not UTF-8", str(bad / "b.txt"))
    fd_out, fd_err = capfd.readouterr()
    assert fd_out.strip() == "" and fd_err.strip() == "", (fd_out, fd_err)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_damaged_gzip_input_is_one_line_naming_it(engine, ray_session, capfd, tmp_path, small_tokenizer_dir):
    """A truncated .jsonl.gz: the local engine's gzip and Ray Data's pyarrow both fail on it; both engines
    give the same line naming the file (Ray's read task names no file: the driver finds it after the
    failure), and nothing is left behind."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text('{"text": "fine"}\n')
    whole = gzip.compress(b'{"text": "hello world"}\n' * 200)
    (src / "b.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    capfd.readouterr()
    code, _, err = run_in_process(
        ["data", "prepare", "-s", f"jsonl:{src}", "--tokenizer", small_tokenizer_dir]
        + ["--out", tmp_path / "d", "--engine", engine]
    )
    assert_one_line_error(code, err, "is not a complete gzip file", str(src / "b.jsonl.gz"))
    fd_out, fd_err = capfd.readouterr()
    assert fd_out.strip() == "" and fd_err.strip() == "", (fd_out, fd_err)
    assert not (tmp_path / "d").exists()
