"""Every `ettin` command, fed broken input: one table, one contract.

For each case: a non-zero exit (2, a user error), exactly one line on stderr that starts with `error:`
and names the problem, no traceback, and nothing in the case's folder written, changed or removed
(every file and folder is compared before and after, content and mtime).

Cases run in-process through `ettin.cli.main` (fast: one interpreter for the whole table); a handful
run again through the installed console script to prove the same end to end.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shlex
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ETTIN_BIN = Path(sys.executable).with_name("ettin")


# ------------------------------------------------------------------------------------------ assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory, small_tokenizer_dir) -> Path:
    """Good inputs the cases copy and break: a tokenizer, an encoder and a decoder (tiny), a corpus."""
    from ettin import hf

    root = tmp_path_factory.mktemp("bad-input-assets")
    shutil.copytree(small_tokenizer_dir, root / "tok")
    hf.init_model("tiny", "encoder", root / "enc", tokenizer=root / "tok", seed=0)
    hf.init_model("tiny", "decoder", root / "dec", tokenizer=root / "tok", seed=0)
    (root / "corpus.txt").write_text("The quick brown fox jumps over the lazy dog.\n" * 200, encoding="utf-8")
    return root


# ------------------------------------------------------------------------------- ways to break input


def copy(*names: str) -> Callable[[Path, Path], None]:
    def setup(work: Path, assets: Path) -> None:
        for name in names:
            src = assets / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / name)

    return setup


def chain(*steps: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def setup(work: Path, assets: Path) -> None:
        for step in steps:
            step(work, assets)

    return setup


def write(rel: str, data: bytes | str) -> Callable[[Path, Path], None]:
    def setup(work: Path, assets: Path) -> None:
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return setup


def remove(rel: str) -> Callable[[Path, Path], None]:
    def setup(work: Path, assets: Path) -> None:
        path = work / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return setup


def truncate(rel: str, size: int) -> Callable[[Path, Path], None]:
    def setup(work: Path, assets: Path) -> None:
        with open(work / rel, "r+b") as f:
            f.truncate(size)

    return setup


def edit_json(rel: str, change: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    def setup(work: Path, assets: Path) -> None:
        path = work / rel
        data = json.loads(path.read_text(encoding="utf-8"))
        out = change(data)
        path.write_text(json.dumps(data if out is None else out), encoding="utf-8")

    return setup


def edit_weights(rel: str, change: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    def setup(work: Path, assets: Path) -> None:
        from safetensors.torch import load_file, save_file

        sd = load_file(str(work / rel))
        change(sd)
        save_file(sd, str(work / rel))

    return setup


def edit_safetensors_header(rel: str, change: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    """Rewrite the JSON header and keep the data: a tampered file that still parses as safetensors."""

    def setup(work: Path, assets: Path) -> None:
        raw = (work / rel).read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8 : 8 + n])
        change(header)
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        (work / rel).write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])

    return setup


class Payload:
    """Unpickling creates the file `PWNED` in the working folder (the snapshot would also see it)."""

    def __reduce__(self):
        return (open, ("PWNED", "w"))


def first_weight(header: dict) -> dict:
    return header[next(k for k in header if k != "__metadata__")]


# ------------------------------------------------------------------------------------------- table


@dataclass
class Case:
    id: str
    args: str  # shell words, run in the case's folder
    expect: str  # regex the error line must match (after "error: ")
    setup: Callable[[Path, Path], None] | None = None


GARBAGE = b"\x80\x81\xfe\xff not utf-8 \xc3\x28"

CASES = [
    # ---------------------------------------------------------------- the command line itself
    Case("unknown-command", "trian --recipe r.yaml", r"No such command 'trian'"),
    Case("unknown-option", "sizes --bogus", r"No such option: --bogus"),
    Case("missing-option", "init --arch encoder --out m", r"Missing option '--size'"),
    Case("missing-argument", "export enc", r"Missing argument 'OUT'|Missing argument 'out'", copy("enc")),
    Case("int-option-not-a-number", "sizes --vocab-size many", r"Invalid value for '--vocab-size'"),
    Case("sizes-vocab-zero", "sizes --vocab-size 0", r"vocab_size 0 is too small"),
    # ---------------------------------------------------------------- init
    Case("init-unknown-size", "init --size huge --arch encoder --out m", r"unknown size 'huge'"),
    Case("init-unknown-arch", "init --size tiny --arch encdec --out m", r"unknown arch 'encdec'"),
    Case("init-vocab-too-small", "init --size tiny --arch encoder --out m --vocab-size 4", r"vocab_size 4 is too small"),
    Case("init-seed-not-int", "init --size tiny --arch encoder --out m --seed x", r"Invalid value for '--seed'"),
    Case("init-out-exists", "init --size tiny --arch encoder --out enc", r"enc: exists and is not empty", copy("enc")),
    Case("init-tokenizer-missing", "init --size tiny --arch encoder --out m --tokenizer nowhere",
         r"nowhere: is not a tokenizer directory \(no such folder\)"),
    Case("init-tokenizer-is-a-file", "init --size tiny --arch encoder --out m --tokenizer corpus.txt",
         r"corpus.txt: is not a tokenizer directory", copy("corpus.txt")),
    Case("init-tokenizer-empty-folder", "init --size tiny --arch encoder --out m --tokenizer empty",
         r"empty: is not a tokenizer directory \(no tokenizer.json\)", write("empty/.keep", "")),
    Case("init-tokenizer-not-utf8", "init --size tiny --arch encoder --out m --tokenizer tok",
         r"tok: cannot be loaded as a tokenizer: .*UTF-8", chain(copy("tok"), write("tok/tokenizer.json", GARBAGE))),
    Case("init-tokenizer-truncated", "init --size tiny --arch encoder --out m --tokenizer tok",
         r"tok: cannot be loaded as a tokenizer: EOF", chain(copy("tok"), truncate("tok/tokenizer.json", 300))),
    Case("init-tokenizer-wrong-schema", "init --size tiny --arch encoder --out m --tokenizer tok",
         r"tok: cannot be loaded as a tokenizer", chain(copy("tok"), write("tok/tokenizer.json", "{}"))),
    Case("init-tokenizer-custom-code", "init --size tiny --arch encoder --out m --tokenizer tok",
         r"tok: cannot be loaded as a tokenizer: .*custom code",
         chain(copy("tok"), write("tok/evil.py", "open('PWNED', 'w')\n"),
               edit_json("tok/tokenizer_config.json", lambda c: c.update(
                   tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]})))),
    Case("init-vocab-below-tokenizer", "init --size tiny --arch encoder --out m --tokenizer tok --vocab-size 512",
         r"tok: field 'vocab_size': the tokenizer has \d+ tokens but vocab_size is 512", copy("tok")),
    # ---------------------------------------------------------------- export / convert: the source model
    Case("export-src-missing", "export nowhere out", r"nowhere: no such model folder"),
    Case("export-src-is-a-file", "export corpus.txt out", r"corpus.txt: is a file, not a model folder", copy("corpus.txt")),
    Case("export-config-missing", "export enc out", r"enc: is not a model folder: config.json is missing",
         chain(copy("enc"), remove("enc/config.json"))),
    Case("export-config-empty", "export enc out", r"enc/config.json: is not valid JSON",
         chain(copy("enc"), write("enc/config.json", ""))),
    Case("export-config-not-json", "export enc out", r"enc/config.json: is not valid JSON",
         chain(copy("enc"), write("enc/config.json", "{hidden_size: 64"))),
    Case("export-config-not-utf8", "export enc out", r"enc/config.json: is not valid JSON",
         chain(copy("enc"), write("enc/config.json", GARBAGE))),
    Case("export-config-a-list", "export enc out", r"enc/config.json: is not a JSON object",
         chain(copy("enc"), write("enc/config.json", "[1, 2]"))),
    Case("export-config-other-model-type", "export enc out", r"field 'model_type': is a 'llama' model, not ModernBERT",
         chain(copy("enc"), edit_json("enc/config.json", lambda c: c.update(model_type="llama")))),
    Case("export-config-wrong-type", "export enc out", r"enc/config.json: .*malformed value.*'big'",
         chain(copy("enc"), edit_json("enc/config.json", lambda c: c.update(hidden_size="big")))),
    Case("export-config-zero-heads", "export enc out", r"field 'num_attention_heads': .*positive integer, got 0",
         chain(copy("enc"), edit_json("enc/config.json", lambda c: c.update(num_attention_heads=0)))),
    Case("export-config-negative-layers", "export enc out", r"field 'num_hidden_layers': .*positive integer, got -1",
         chain(copy("enc"), edit_json("enc/config.json", lambda c: c.update(num_hidden_layers=-1)))),
    Case("export-weights-missing", "export enc out", r"enc: has no weights",
         chain(copy("enc"), remove("enc/model.safetensors"))),
    Case("export-weights-empty", "export enc out", r"enc/model.safetensors: is truncated or corrupt \(0 bytes",
         chain(copy("enc"), write("enc/model.safetensors", b""))),
    Case("export-weights-truncated", "export enc out", r"enc/model.safetensors: is truncated or corrupt",
         chain(copy("enc"), truncate("enc/model.safetensors", 5000))),
    Case("export-weights-header-garbage", "export enc out", r"enc/model.safetensors: is truncated or corrupt",
         chain(copy("enc"), lambda w, a: _poke(w / "enc/model.safetensors", 12, b"\xff\xfe\xfd"))),
    Case("export-weights-header-offsets-tampered", "export enc out",
         r"enc/model.safetensors: is truncated or corrupt: the header describes",
         chain(copy("enc"), edit_safetensors_header(
             "enc/model.safetensors", lambda h: first_weight(h)["data_offsets"].__setitem__(1, 10**9)))),
    Case("export-weights-wrong-shape", "export enc out", r"enc: weight model.final_norm.weight has shape \(3,\)",
         chain(copy("enc"), edit_weights("enc/model.safetensors",
                                          lambda sd: sd.__setitem__("model.final_norm.weight", sd["model.final_norm.weight"][:3].clone())))),
    Case("export-weights-key-missing", "export enc out", r"enc: the weights do not match the config \(1 missing",
         chain(copy("enc"), edit_weights("enc/model.safetensors", lambda sd: sd.pop("model.final_norm.weight")))),
    Case("export-index-names-missing-shard", "export enc out", r"names the shard 'model-00002-of-00002.safetensors', which is missing",
         chain(copy("enc"), remove("enc/model.safetensors"),
               write("enc/model.safetensors.index.json",
                     json.dumps({"weight_map": {"model.final_norm.weight": "model-00002-of-00002.safetensors"}})))),
    Case("export-index-path-escape", "export enc out", r"names the shard '../../etc/passwd', which is missing",
         chain(copy("enc"), remove("enc/model.safetensors"),
               write("enc/model.safetensors.index.json", json.dumps({"weight_map": {"x": "../../etc/passwd"}})))),
    Case("export-pickle-weights", "export enc out", r"enc: has only pickle weights \(pytorch_model.bin\)",
         chain(copy("enc"), remove("enc/model.safetensors"), write("enc/pytorch_model.bin", pickle.dumps(Payload())))),
    Case("export-out-exists", "export enc dec", r"dec: exists and is not empty", copy("enc", "dec")),
    Case("export-out-is-cwd", "export enc .", r"\.: exists and is not empty", copy("enc")),
    Case("export-revision-on-model-folder", "export enc out --revision step5",
         r"enc: field 'revision': is a model folder, so --revision step5 does not apply", copy("enc")),
    Case("export-unknown-arch", "export enc out --arch both", r"unknown arch 'both'", copy("enc")),
    Case("export-tokenizer-not-utf8", "export enc out --tokenizer tok", r"tok/tokenizer.json: is not a readable tokenizer file",
         chain(copy("enc", "tok"), write("tok/tokenizer.json", GARBAGE))),
    Case("convert-same-arch", "convert enc out --arch encoder", r"enc: field 'arch': is already an encoder", copy("enc")),
    Case("convert-missing-arch", "convert dec out", r"Missing option '--arch'", copy("dec")),
    Case("convert-truncated", "convert dec out --arch encoder", r"dec/model.safetensors: is truncated or corrupt",
         chain(copy("dec"), truncate("dec/model.safetensors", 100))),
    # ---------------------------------------------------------------- tokenizer
    Case("tok-train-corpus-missing", "tokenizer train --corpus nowhere.txt --vocab-size 512 --out t",
         r"nowhere.txt: no such file or folder"),
    Case("tok-train-corpus-unknown-kind", "tokenizer train --corpus nosuch:foo --vocab-size 512 --out t",
         r"nosuch:foo: no such file or folder"),
    Case("tok-train-corpus-empty", "tokenizer train --corpus empty.txt --vocab-size 512 --out t",
         r"the corpus is empty", write("empty.txt", "")),
    Case("tok-train-corpus-blank", "tokenizer train --corpus blank.txt --vocab-size 512 --out t",
         r"the corpus is empty", write("blank.txt", "\n  \n\t\n")),
    Case("tok-train-corpus-not-utf8", "tokenizer train --corpus bad.txt --vocab-size 512 --out t",
         r"bad.txt: \d+ byte\(s\) that are not UTF-8", write("bad.txt", b"fine text " + GARBAGE)),
    Case("tok-train-jsonl-bad-line", "tokenizer train --corpus c.jsonl --vocab-size 512 --out t",
         r"c.jsonl: malformed JSONL line\(s\) 2", write("c.jsonl", '{"text": "ok"}\nnot json\n')),
    Case("tok-train-jsonl-no-field", "tokenizer train --corpus c.jsonl --vocab-size 512 --out t",
         r"c.jsonl: malformed JSONL line\(s\) 1 \(no key 'text'\)", write("c.jsonl", '{"body": "ok"}\n')),
    Case("tok-train-jsonl-wrong-type", "tokenizer train --corpus c.jsonl --vocab-size 512 --out t",
         r"c.jsonl: malformed JSONL line\(s\) 1", write("c.jsonl", '{"text": 12}\n')),
    Case("tok-train-vocab-too-small", "tokenizer train --corpus corpus.txt --vocab-size 0 --out t",
         r"field 'vocab_size': vocab size 0 is too small", copy("corpus.txt")),
    Case("tok-train-on-error-unknown", "tokenizer train --corpus corpus.txt --vocab-size 512 --out t --on-error maybe",
         r"unknown on_error 'maybe'", copy("corpus.txt")),
    Case("tok-train-out-exists", "tokenizer train --corpus corpus.txt --vocab-size 512 --out tok",
         r"tok: exists and is not empty", copy("corpus.txt", "tok")),
    Case("tok-modernbert-out-exists", "tokenizer modernbert --out tok", r"tok: exists and is not empty", copy("tok")),
]


def _poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


# ------------------------------------------------------------------------------------------ runner


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its kind, and for files size, mtime and content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = ("dir",)
        else:
            st = p.stat()
            out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def run_in_process(args: list[str]) -> tuple[int, str, str]:
    from ettin.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["ettin", *args]
    code: object = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code
    finally:
        sys.argv = argv
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()


def run_console_script(args: list[str], cwd: Path) -> tuple[int, str, str]:
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    proc = subprocess.run([str(ETTIN_BIN), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300,
                          stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def check_case(case: Case, work: Path, result: tuple[int, str, str], before: dict) -> None:
    code, out, err = result
    shown = f"exit {code}\n--- stderr\n{err}\n--- stdout\n{out}"
    assert "Traceback" not in err + out, shown
    assert code == 2, shown
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert __import__("re").search(case.expect, lines[0]), f"expected /{case.expect}/\n{shown}"
    assert not (work / "PWNED").exists(), "a payload ran"
    after = snapshot(work)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == [], f"the command wrote or changed {changed}\n{shown}"


def prepare_case(case: Case, tmp_path: Path, assets: Path) -> tuple[Path, dict]:
    work = tmp_path / "work"
    work.mkdir()
    if case.setup is not None:
        case.setup(work, assets)
    return work, snapshot(work)


def test_snapshot_sees_new_changed_and_rewritten_files(tmp_path):
    (tmp_path / "a").write_text("same")
    before = snapshot(tmp_path)
    os.utime(tmp_path / "a", ns=(1, 1))  # same bytes, rewritten
    (tmp_path / "b").mkdir()
    after = snapshot(tmp_path)
    assert sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)) == ["a", "b"]


def test_the_table_is_large_and_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, tmp_path, assets, monkeypatch):
    work, before = prepare_case(case, tmp_path, assets)
    monkeypatch.chdir(work)
    check_case(case, work, run_in_process(shlex.split(case.args)), before)


# The same contract through the real console script: process exit code, stderr, no traceback.
END_TO_END = ["unknown-command", "missing-option", "init-tokenizer-not-utf8", "export-weights-truncated",
              "export-pickle-weights", "tok-train-corpus-not-utf8"]


@pytest.mark.parametrize("case_id", END_TO_END)
def test_bad_input_console_script(case_id: str, tmp_path, assets):
    case = next(c for c in CASES if c.id == case_id)
    work, before = prepare_case(case, tmp_path, assets)
    check_case(case, work, run_console_script(shlex.split(case.args), work), before)
