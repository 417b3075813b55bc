"""Every `ettin` command, fed broken input: one table, one contract.

For each case: a non-zero exit (2, a user error), exactly one line on stderr that starts with `error:`
and names the problem, no traceback, and nothing in the case's folder written, changed or removed
(every file and folder is compared before and after, content and mtime).

Cases run in-process through `ettin.cli.main` (fast: one interpreter for the whole table); a handful
run again through the installed console script to prove the same end to end.
"""

from __future__ import annotations

import contextlib
import copy as copying
import hashlib
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

from support import assert_one_line_error, run_in_process

ETTIN_BIN = Path(sys.executable).with_name("ettin")


# ------------------------------------------------------------------------------------------ assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory, small_tokenizer_dir) -> Path:
    """Good inputs the cases copy and break: a tokenizer, an encoder and a decoder (tiny), a corpus."""
    from ettin import commands

    root = tmp_path_factory.mktemp("bad-input-assets")
    shutil.copytree(small_tokenizer_dir, root / "tok")
    commands.init_model("tiny", "encoder", root / "enc", tokenizer=root / "tok", seed=0)
    commands.init_model("tiny", "decoder", root / "dec", tokenizer=root / "tok", seed=0)
    (root / "corpus.txt").write_text("The quick brown fox jumps over the lazy dog.\n" * 200, encoding="utf-8")
    _prepared_data_and_run(root)
    return root


def _prepared_data_and_run(root: Path) -> None:
    """data/wiki (several shards), tok2 (another tokenizer), r.yaml (a tiny pair recipe) and run/ (its
    run: two checkpoints per model)."""
    import itertools

    import torch
    import yaml

    from ettin.data.prepare import prepare
    from ettin.data.sources import builtin_texts
    from ettin.recipe import load_recipe
    from ettin.tokenizer import train_tokenizer
    from ettin.train.trainer import TrainOptions, train

    with open(root / "wiki.jsonl", "w", encoding="utf-8") as f:
        for text in itertools.islice(builtin_texts("wiki"), 60):
            f.write(json.dumps({"text": text}) + "\n")
    prepare([f"wiki=jsonl:{root / 'wiki.jsonl'}"], root / "tok", root / "data", shard_tokens=3000)
    train_tokenizer([(root / "corpus.txt").read_text()] * 3, 320, root / "tok2")
    recipe = {
        "model": {"size": "tiny", "max_position_embeddings": 64},
        "tokenizer": str(root / "tok"),
        "data_dir": str(root / "data"),
        "precision": "fp32",
        "micro_batch_size": 4,
        "checkpoint": {"every_tokens": 128},
        "phases": [{"tokens": 260, "seq_len": 32, "batch_size": 4, "data": {"mixture": {"wiki": 1}}}],
    }
    (root / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(
            load_recipe(root / "r.yaml"),
            TrainOptions(out=root / "run", progress=False, tensorboard=False, log=lambda *_: None),
        )
    finally:
        torch.set_num_threads(threads)


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


def edit_recipe(change: Callable[[dict], None], name: str = "r.yaml") -> Callable[[Path, Path], None]:
    """The assets' tiny recipe, changed, written as `name` in the case's folder."""

    def setup(work: Path, assets: Path) -> None:
        import yaml

        raw = yaml.safe_load((assets / "r.yaml").read_text(encoding="utf-8"))
        change(raw)
        (work / name).write_text(yaml.safe_dump(raw), encoding="utf-8")

    return setup


def latest_state(work: Path, arch: str = "encoder") -> Path:
    from ettin.train import checkpoint as ck

    return ck.latest_full_state(work / "run" / arch)


def damage_latest_checkpoint(work: Path, assets: Path) -> None:
    with open(latest_state(work) / "model.safetensors", "r+b") as f:
        f.truncate(100)


def pickled_shard(work: Path, assets: Path) -> None:
    import numpy as np

    shard = work / "data" / "wiki" / "tokens-00000.npy"
    np.save(shard, np.array([Payload(), 1], dtype=object), allow_pickle=True)
    edit_json("data/wiki/manifest.json", lambda m: m["shards"][0]["tokens"].update(bytes=shard.stat().st_size))(
        work, assets
    )


def flip_byte(rel: str, offset: int) -> Callable[[Path, Path], None]:
    def setup(work: Path, assets: Path) -> None:
        with open(work / rel, "r+b") as f:
            f.seek(offset)
            b = f.read(1)
            f.seek(offset)
            f.write(bytes([b[0] ^ 1]))

    return setup


def order_part(work: Path, arch: str, index: int) -> Path:
    return sorted((work / "run" / arch / "data_order").glob("part-*.parquet"))[index]


def tamper_order_rows(work: Path, assets: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = order_part(work, "decoder", 0)
    table = pq.read_table(part)
    cols = table.to_pydict()
    cols["input_ids"][0] = cols["input_ids"][0][::-1]
    pq.write_table(pa.table(cols, schema=table.schema), part)


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
    Case(
        "init-vocab-too-small", "init --size tiny --arch encoder --out m --vocab-size 4", r"vocab_size 4 is too small"
    ),
    Case("init-seed-not-int", "init --size tiny --arch encoder --out m --seed x", r"Invalid value for '--seed'"),
    Case("init-out-exists", "init --size tiny --arch encoder --out enc", r"enc: exists and is not empty", copy("enc")),
    Case(
        "init-tokenizer-missing",
        "init --size tiny --arch encoder --out m --tokenizer nowhere",
        r"nowhere: is not a tokenizer directory \(no such folder\)",
    ),
    Case(
        "init-tokenizer-is-a-file",
        "init --size tiny --arch encoder --out m --tokenizer corpus.txt",
        r"corpus.txt: is not a tokenizer directory",
        copy("corpus.txt"),
    ),
    Case(
        "init-tokenizer-empty-folder",
        "init --size tiny --arch encoder --out m --tokenizer empty",
        r"empty: is not a tokenizer directory \(no tokenizer.json\)",
        write("empty/.keep", ""),
    ),
    Case(
        "init-tokenizer-not-utf8",
        "init --size tiny --arch encoder --out m --tokenizer tok",
        r"tok: cannot be loaded as a tokenizer: .*UTF-8",
        chain(copy("tok"), write("tok/tokenizer.json", GARBAGE)),
    ),
    Case(
        "init-tokenizer-truncated",
        "init --size tiny --arch encoder --out m --tokenizer tok",
        r"tok: cannot be loaded as a tokenizer: EOF",
        chain(copy("tok"), truncate("tok/tokenizer.json", 300)),
    ),
    Case(
        "init-tokenizer-wrong-schema",
        "init --size tiny --arch encoder --out m --tokenizer tok",
        r"tok: cannot be loaded as a tokenizer",
        chain(copy("tok"), write("tok/tokenizer.json", "{}")),
    ),
    Case(
        "init-tokenizer-custom-code",
        "init --size tiny --arch encoder --out m --tokenizer tok",
        r"tok: cannot be loaded as a tokenizer: .*custom code",
        chain(
            copy("tok"),
            write("tok/evil.py", "open('PWNED', 'w')\n"),
            edit_json(
                "tok/tokenizer_config.json",
                lambda c: c.update(
                    tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]}
                ),
            ),
        ),
    ),
    Case(
        "init-vocab-below-tokenizer",
        "init --size tiny --arch encoder --out m --tokenizer tok --vocab-size 512",
        r"tok: field 'vocab_size': the tokenizer has \d+ tokens but vocab_size is 512",
        copy("tok"),
    ),
    # ---------------------------------------------------------------- export / convert: the source model
    Case("export-src-missing", "export nowhere out", r"nowhere: no such model folder"),
    Case(
        "export-src-is-a-file",
        "export corpus.txt out",
        r"corpus.txt: is a file, not a model folder",
        copy("corpus.txt"),
    ),
    Case(
        "export-config-missing",
        "export enc out",
        r"enc: is not a model folder: config.json is missing",
        chain(copy("enc"), remove("enc/config.json")),
    ),
    Case(
        "export-config-empty",
        "export enc out",
        r"enc/config.json: is not valid JSON",
        chain(copy("enc"), write("enc/config.json", "")),
    ),
    Case(
        "export-config-not-json",
        "export enc out",
        r"enc/config.json: is not valid JSON",
        chain(copy("enc"), write("enc/config.json", "{hidden_size: 64")),
    ),
    Case(
        "export-config-not-utf8",
        "export enc out",
        r"enc/config.json: is not valid JSON",
        chain(copy("enc"), write("enc/config.json", GARBAGE)),
    ),
    Case(
        "export-config-a-list",
        "export enc out",
        r"enc/config.json: is not a JSON object",
        chain(copy("enc"), write("enc/config.json", "[1, 2]")),
    ),
    Case(
        "export-config-other-model-type",
        "export enc out",
        r"field 'model_type': is a 'llama' model, not ModernBERT",
        chain(copy("enc"), edit_json("enc/config.json", lambda c: c.update(model_type="llama"))),
    ),
    Case(
        "export-config-wrong-type",
        "export enc out",
        r"enc/config.json: .*malformed value.*'big'",
        chain(copy("enc"), edit_json("enc/config.json", lambda c: c.update(hidden_size="big"))),
    ),
    Case(
        "export-config-zero-heads",
        "export enc out",
        r"field 'num_attention_heads': .*positive integer, got 0",
        chain(copy("enc"), edit_json("enc/config.json", lambda c: c.update(num_attention_heads=0))),
    ),
    Case(
        "export-config-negative-layers",
        "export enc out",
        r"field 'num_hidden_layers': .*positive integer, got -1",
        chain(copy("enc"), edit_json("enc/config.json", lambda c: c.update(num_hidden_layers=-1))),
    ),
    Case(
        "export-weights-missing",
        "export enc out",
        r"enc: has no weights",
        chain(copy("enc"), remove("enc/model.safetensors")),
    ),
    Case(
        "export-weights-empty",
        "export enc out",
        r"enc/model.safetensors: is truncated or corrupt \(0 bytes",
        chain(copy("enc"), write("enc/model.safetensors", b"")),
    ),
    Case(
        "export-weights-truncated",
        "export enc out",
        r"enc/model.safetensors: is truncated or corrupt",
        chain(copy("enc"), truncate("enc/model.safetensors", 5000)),
    ),
    Case(
        "export-weights-header-garbage",
        "export enc out",
        r"enc/model.safetensors: is truncated or corrupt",
        chain(copy("enc"), lambda w, a: _poke(w / "enc/model.safetensors", 12, b"\xff\xfe\xfd")),
    ),
    Case(
        "export-weights-header-offsets-tampered",
        "export enc out",
        r"enc/model.safetensors: is truncated or corrupt: the header describes",
        chain(
            copy("enc"),
            edit_safetensors_header(
                "enc/model.safetensors", lambda h: first_weight(h)["data_offsets"].__setitem__(1, 10**9)
            ),
        ),
    ),
    Case(
        "export-weights-wrong-shape",
        "export enc out",
        r"enc: weight model.final_norm.weight has shape \(3,\)",
        chain(
            copy("enc"),
            edit_weights(
                "enc/model.safetensors",
                lambda sd: sd.__setitem__("model.final_norm.weight", sd["model.final_norm.weight"][:3].clone()),
            ),
        ),
    ),
    Case(
        "export-weights-key-missing",
        "export enc out",
        r"enc: the weights do not match the config \(1 missing",
        chain(copy("enc"), edit_weights("enc/model.safetensors", lambda sd: sd.pop("model.final_norm.weight"))),
    ),
    Case(
        "export-index-names-missing-shard",
        "export enc out",
        r"names the shard 'model-00002-of-00002.safetensors', which is missing",
        chain(
            copy("enc"),
            remove("enc/model.safetensors"),
            write(
                "enc/model.safetensors.index.json",
                json.dumps({"weight_map": {"model.final_norm.weight": "model-00002-of-00002.safetensors"}}),
            ),
        ),
    ),
    Case(
        "export-index-path-escape",
        "export enc out",
        r"names the shard '../../etc/passwd', which is missing",
        chain(
            copy("enc"),
            remove("enc/model.safetensors"),
            write("enc/model.safetensors.index.json", json.dumps({"weight_map": {"x": "../../etc/passwd"}})),
        ),
    ),
    Case(
        "export-pickle-weights",
        "export enc out",
        r"enc: has only pickle weights \(pytorch_model.bin\)",
        chain(copy("enc"), remove("enc/model.safetensors"), write("enc/pytorch_model.bin", pickle.dumps(Payload()))),
    ),
    Case("export-out-exists", "export enc dec", r"dec: exists and is not empty", copy("enc", "dec")),
    Case("export-out-is-cwd", "export enc .", r"\.: exists and is not empty", copy("enc")),
    Case(
        "export-revision-on-model-folder",
        "export enc out --revision step5",
        r"enc: field 'revision': is a model folder, so --revision step5 does not apply",
        copy("enc"),
    ),
    Case("export-unknown-arch", "export enc out --arch both", r"unknown arch 'both'", copy("enc")),
    Case(
        "export-tokenizer-not-utf8",
        "export enc out --tokenizer tok",
        r"tok/tokenizer.json: is not a readable tokenizer file",
        chain(copy("enc", "tok"), write("tok/tokenizer.json", GARBAGE)),
    ),
    Case(
        "convert-same-arch", "convert enc out --arch encoder", r"enc: field 'arch': is already an encoder", copy("enc")
    ),
    Case("convert-missing-arch", "convert dec out", r"Missing option '--arch'", copy("dec")),
    Case(
        "convert-truncated",
        "convert dec out --arch encoder",
        r"dec/model.safetensors: is truncated or corrupt",
        chain(copy("dec"), truncate("dec/model.safetensors", 100)),
    ),
    # ---------------------------------------------------------------- tokenizer
    Case(
        "tok-train-corpus-missing",
        "tokenizer train --corpus nowhere.txt --vocab-size 512 --out t",
        r"nowhere.txt: no such file or folder",
    ),
    Case(
        "tok-train-corpus-unknown-kind",
        "tokenizer train --corpus nosuch:foo --vocab-size 512 --out t",
        r"nosuch:foo: no such file or folder",
    ),
    Case(
        "tok-train-corpus-empty",
        "tokenizer train --corpus empty.txt --vocab-size 512 --out t",
        r"the corpus is empty",
        write("empty.txt", ""),
    ),
    Case(
        "tok-train-corpus-blank",
        "tokenizer train --corpus blank.txt --vocab-size 512 --out t",
        r"the corpus is empty",
        write("blank.txt", "\n  \n\t\n"),
    ),
    Case(
        "tok-train-corpus-not-utf8",
        "tokenizer train --corpus bad.txt --vocab-size 512 --out t",
        r"bad.txt: \d+ byte\(s\) that are not UTF-8",
        write("bad.txt", b"fine text " + GARBAGE),
    ),
    Case(
        "tok-train-jsonl-bad-line",
        "tokenizer train --corpus c.jsonl --vocab-size 512 --out t",
        r"c.jsonl: malformed JSONL line\(s\) 2",
        write("c.jsonl", '{"text": "ok"}\nnot json\n'),
    ),
    Case(
        "tok-train-jsonl-no-field",
        "tokenizer train --corpus c.jsonl --vocab-size 512 --out t",
        r"c.jsonl: malformed JSONL line\(s\) 1 \(no key 'text'\)",
        write("c.jsonl", '{"body": "ok"}\n'),
    ),
    Case(
        "tok-train-jsonl-wrong-type",
        "tokenizer train --corpus c.jsonl --vocab-size 512 --out t",
        r"c.jsonl: malformed JSONL line\(s\) 1",
        write("c.jsonl", '{"text": 12}\n'),
    ),
    Case(
        "tok-train-vocab-too-small",
        "tokenizer train --corpus corpus.txt --vocab-size 0 --out t",
        r"field 'vocab_size': vocab size 0 is too small",
        copy("corpus.txt"),
    ),
    Case(
        "tok-train-on-error-unknown",
        "tokenizer train --corpus corpus.txt --vocab-size 512 --out t --on-error maybe",
        r"unknown on_error 'maybe'",
        copy("corpus.txt"),
    ),
    Case(
        "tok-train-out-exists",
        "tokenizer train --corpus corpus.txt --vocab-size 512 --out tok",
        r"tok: exists and is not empty",
        copy("corpus.txt", "tok"),
    ),
    Case("tok-modernbert-out-exists", "tokenizer modernbert --out tok", r"tok: exists and is not empty", copy("tok")),
    # ---------------------------------------------------------------- data prepare
    Case(
        "prepare-source-not-utf8",
        "data prepare --source c=text:bad.txt --tokenizer tok --out d",
        r"bad.txt: \d+ byte\(s\) that are not UTF-8",
        chain(copy("tok"), write("bad.txt", b"text " + GARBAGE)),
    ),
    Case(
        "prepare-source-empty",
        "data prepare --source c=text:empty.txt --tokenizer tok --out d",
        r"empty.txt: field 'source': no text to prepare",
        chain(copy("tok"), write("empty.txt", "")),
    ),
    Case(
        "prepare-jsonl-bad-line",
        "data prepare --source c=jsonl:c.jsonl --tokenizer tok --out d",
        r"c.jsonl: malformed JSONL line\(s\) 2",
        chain(copy("tok"), write("c.jsonl", '{"text": "a b c"}\n{"text": \n')),
    ),
    Case(
        "prepare-source-missing",
        "data prepare --source c=text:nowhere.txt --tokenizer tok --out d",
        r"nowhere.txt: field 'source': no such file or folder",
        copy("tok"),
    ),
    Case(
        "prepare-source-unknown-kind",
        "data prepare --source c=csv:wiki.jsonl --tokenizer tok --out d",
        r"unknown source kind 'csv'",
        copy("tok", "wiki.jsonl"),
    ),
    Case(
        "prepare-two-sources-one-name",
        "data prepare --source c=jsonl:wiki.jsonl --source c=text:corpus.txt --tokenizer tok --out d",
        r"two sources share a name",
        copy("tok", "wiki.jsonl", "corpus.txt"),
    ),
    Case(
        "prepare-tokenizer-missing",
        "data prepare --source c=jsonl:wiki.jsonl --tokenizer nowhere --out d",
        r"nowhere: is not a tokenizer directory",
        copy("wiki.jsonl"),
    ),
    Case(
        "prepare-shard-tokens-zero",
        "data prepare --source c=jsonl:wiki.jsonl --tokenizer tok --out d --shard-tokens 0",
        r"field 'shard-tokens': 0 is not a whole number from 1 to",
        copy("tok", "wiki.jsonl"),
    ),
    Case(
        "prepare-unknown-split",
        "data prepare --source c=text:corpus.txt --tokenizer tok --out d --split sentence",
        r"unknown split 'sentence'",
        copy("tok", "corpus.txt"),
    ),
    Case(
        "prepare-out-has-another-tokenizers-data",
        "data prepare --source wiki=jsonl:wiki.jsonl --tokenizer tok2 --out data",
        r"data: field 'tokenizer': 'wiki' here was prepared with another tokenizer",
        copy("tok2", "wiki.jsonl", "data"),
    ),
    # ---------------------------------------------------------------- data inspect / mixture
    Case("inspect-missing", "data inspect nowhere", r"nowhere: no such folder"),
    Case("inspect-not-data", "data inspect tok", r"tok: no prepared sources here", copy("tok")),
    Case(
        "inspect-shard-truncated",
        "data inspect data",
        r"data/wiki/tokens-00001.npy: shard file has 100 bytes",
        chain(copy("data"), truncate("data/wiki/tokens-00001.npy", 100)),
    ),
    Case(
        "inspect-shard-missing",
        "data inspect data",
        r"data/wiki/docs-00000.npy: shard file is missing",
        chain(copy("data"), remove("data/wiki/docs-00000.npy")),
    ),
    Case(
        "inspect-manifest-not-json",
        "data inspect data",
        r"data/wiki/manifest.json: manifest is not valid JSON",
        chain(copy("data"), write("data/wiki/manifest.json", '{"format": ')),
    ),
    Case(
        "inspect-manifest-not-utf8",
        "data inspect data",
        r"data/wiki/manifest.json: manifest is not valid JSON",
        chain(copy("data"), write("data/wiki/manifest.json", GARBAGE)),
    ),
    Case(
        "inspect-manifest-version",
        "data inspect data",
        r"manifest version 99 is not 1",
        chain(copy("data"), edit_json("data/wiki/manifest.json", lambda m: m.update(version=99))),
    ),
    Case(
        "inspect-verify-tampered-shard",
        "data inspect data --verify",
        r"tokens-00001.npy: shard file's sha256 differs",
        chain(copy("data"), flip_byte("data/wiki/tokens-00001.npy", 200)),
    ),
    Case(
        "inspect-pickled-shard",
        "data inspect data",
        r"tokens-00000.npy: is not a plain numeric array",
        chain(copy("data"), pickled_shard),
    ),
    Case(
        "mixture-weight-not-a-number",
        "data mixture --data data --weight wiki=lots",
        r"field '--weight': 'lots' \(for wiki\) is not a number",
        copy("data"),
    ),
    Case(
        "mixture-unknown-source",
        "data mixture --data data --weight books=1",
        r"data/books: no prepared data here",
        copy("data"),
    ),
    Case(
        "mixture-negative-weight",
        "data mixture --data data --weight wiki=-1",
        r"weight -1.0 is not positive",
        copy("data"),
    ),
    Case(
        "mixture-tokens-unreadable",
        "data mixture --data data --weight wiki=1 --tokens many",
        r"field '--tokens': cannot read 'many'",
        copy("data"),
    ),
    # ---------------------------------------------------------------- data order / pair verify
    Case("order-missing", "data order nowhere", r"nowhere: no such folder"),
    Case(
        "order-step-not-recorded", "data order run --step 999", r"field '--step': step 999 is not recorded", copy("run")
    ),
    Case(
        "order-export-unknown-format",
        "data order run --export rows.csv",
        r"rows.csv: field '--export': unknown export format",
        copy("run"),
    ),
    Case(
        "order-export-exists",
        "data order run --export corpus.txt.jsonl",
        r"corpus.txt.jsonl: field '--export': exists",
        chain(copy("run"), write("corpus.txt.jsonl", "mine\n")),
    ),
    Case(
        "order-damaged-part",
        "data order run --arch decoder",
        r"part-\d+.parquet: is not a readable data-order part",
        chain(copy("run"), lambda w, a: order_part(w, "decoder", 0).write_bytes(b"PAR1 not really")),
    ),
    Case(
        "pair-verify-no-decoder", "pair verify run", r"no decoder data order", chain(copy("run"), remove("run/decoder"))
    ),
    Case(
        "pair-verify-tampered-rows",
        "pair verify run",
        r"step \d+: rows do not match their batch_hash",
        chain(copy("run"), tamper_order_rows),
    ),
    # ---------------------------------------------------------------- train: the recipe
    Case("train-recipe-missing", "train nowhere.yaml --out o", r"nowhere.yaml: no such recipe file"),
    Case(
        "train-recipe-empty",
        "train r.yaml --out o",
        r"r.yaml: field 'model': gives neither a size nor the full shape",
        write("r.yaml", ""),
    ),
    Case(
        "train-recipe-not-utf8",
        "train r.yaml --out o",
        r"r.yaml: is not UTF-8 text",
        write("r.yaml", b"name: " + GARBAGE),
    ),
    Case(
        "train-recipe-a-list",
        "train r.yaml --out o",
        r"r.yaml: must hold a mapping of recipe fields, got a list",
        write("r.yaml", "- tiny\n"),
    ),
    Case(
        "train-recipe-not-yaml",
        "train r.yaml --out o",
        r"r.yaml: is not valid YAML at line 2",
        write("r.yaml", "name: x\n  bad: [\n"),
    ),
    Case(
        "train-recipe-python-tag",
        "train r.yaml --out o",
        r"r.yaml: is not valid YAML .*python/object/apply",
        write("r.yaml", "name: !!python/object/apply:builtins.open ['PWNED', 'w']\n"),
    ),
    Case(
        "train-recipe-unknown-key",
        "train r.yaml --out o",
        r"r.yaml: field 'sede': unknown key 'sede'",
        edit_recipe(lambda r: r.update(sede=5)),
    ),
    Case(
        "train-recipe-wrong-type",
        "train r.yaml --out o",
        r"r.yaml: field 'seed': must be an integer, got str 'abc'",
        edit_recipe(lambda r: r.update(seed="abc")),
    ),
    Case(
        "train-recipe-out-of-range",
        "train r.yaml --out o",
        r"field 'phases.0.mask_rate': 1.5 is above the maximum 1.0",
        edit_recipe(lambda r: r["phases"][0].update(mask_rate=1.5)),
    ),
    Case(
        "train-recipe-unknown-size",
        "train r.yaml --out o",
        r"field 'model.size': unknown size 'huge'",
        edit_recipe(lambda r: r["model"].update(size="huge")),
    ),
    Case(
        "train-recipe-no-phases",
        "train r.yaml --out o",
        r"field 'phases': no phases given",
        edit_recipe(lambda r: r.update(phases=[])),
    ),
    Case(
        "train-tokenizer-missing",
        "train r.yaml --out o",
        r"nowhere: field 'tokenizer': no tokenizer here",
        edit_recipe(lambda r: r.update(tokenizer="nowhere")),
    ),
    Case(
        "train-source-not-prepared",
        "train r.yaml --out o",
        r"field 'data': source\(s\) books not prepared here",
        edit_recipe(lambda r: r["phases"][0]["data"].update(mixture={"books": 1})),
    ),
    Case(
        "train-data-of-another-tokenizer",
        "train r.yaml --out o",
        r"field 'tokenizer': source 'wiki' was prepared with a different tokenizer",
        chain(copy("tok2"), edit_recipe(lambda r: r.update(tokenizer="tok2"))),
    ),
    # ---------------------------------------------------------------- train: flags and folders
    Case("train-no-recipe", "train --out o", r"no recipe given"),
    Case(
        "train-out-not-empty",
        "train r.yaml --out tok",
        r"tok: exists and is not an empty folder",
        chain(copy("tok"), edit_recipe(lambda r: None)),
    ),
    Case(
        "train-out-holds-a-run",
        "train r.yaml --out run",
        r"run: already holds a training run",
        chain(copy("run"), edit_recipe(lambda r: None)),
    ),
    Case(
        "train-resume-nothing",
        "train r.yaml --resume --out tok",
        r"tok: holds no run to resume",
        chain(copy("tok"), edit_recipe(lambda r: None)),
    ),
    Case(
        "train-resume-changed-recipe",
        "train r.yaml --resume --out run",
        r"the recipe differs from the one the run started with: seed: 21 -> 7",
        chain(copy("run"), edit_recipe(lambda r: r.update(seed=7))),
    ),
    Case(
        "train-resume-damaged-checkpoint",
        "train --resume --out run",
        r"model.safetensors: cannot be read",
        chain(copy("run"), damage_latest_checkpoint),
    ),
    Case(
        "train-unknown-arch",
        "train r.yaml --out o --arch both",
        r"field 'arch': unknown arch 'both'",
        edit_recipe(lambda r: None),
    ),
    Case(
        "train-set-without-equals",
        "train r.yaml --out o --set seed",
        r"override 'seed' has no '='",
        edit_recipe(lambda r: None),
    ),
    Case(
        "train-set-unknown-field",
        "train r.yaml --out o --set optimizer.rl=1",
        r"field 'optimizer.rl': unknown key 'rl'",
        edit_recipe(lambda r: None),
    ),
    Case(
        "train-set-no-such-phase",
        "train r.yaml --out o --set phases.3.tokens=1",
        r"no item 3 in a list of 1",
        edit_recipe(lambda r: None),
    ),
    Case(
        "train-revision-without-init",
        "train r.yaml --out o --revision step2",
        r"field 'init.revision': a revision without init.path",
        edit_recipe(lambda r: None),
    ),
    Case(
        "train-init-missing",
        "train r.yaml --out o --init nowhere",
        r"nowhere: no such model folder",
        edit_recipe(lambda r: None),
    ),
    Case(
        "train-init-pickle-weights",
        "train r.yaml --out o --init enc",
        r"enc: has only pickle weights",
        chain(
            edit_recipe(lambda r: None),
            copy("enc"),
            remove("enc/model.safetensors"),
            write("enc/pytorch_model.bin", pickle.dumps(Payload())),
        ),
    ),
    Case(
        "train-unknown-device",
        "train r.yaml --out o --device tpu",
        r"field 'device': unknown device 'tpu'",
        edit_recipe(lambda r: None),
    ),
    Case(
        "train-force-without-resume",
        "train r.yaml --out o --force",
        r"field '--force': --force only applies with --resume",
        edit_recipe(lambda r: None),
    ),
    Case(
        "order-check-with-export",
        "data order run --check --export rows.jsonl",
        r"field '--check': --check compares the whole order; it does not combine with --export",
        copy("run"),
    ),
    Case(
        "train-max-steps-negative",
        "train r.yaml --out o --max-steps -1",
        r"field '--max-steps': -1 must be at least 1",
        edit_recipe(lambda r: None),
    ),
    # ---------------------------------------------------------------- runs: checkpoints, plot, export by revision
    Case("checkpoints-not-a-run", "checkpoints tok", r"tok: is not a training run", copy("tok")),
    Case("plot-not-a-run", "plot tok", r"tok: has no metrics to plot", copy("tok")),
    Case(
        "export-run-without-model-folder",
        "export run out",
        r"run: is not a model's training run .*give the model's folder, e.g. run/encoder",
        copy("run"),
    ),
    Case(
        "export-run-unknown-revision",
        "export run/encoder out --revision step99",
        r"run/encoder: no revision 'step99' \(available: ",
        copy("run"),
    ),
    # ---------------------------------------------------------------- evaluation
    Case("eval-model-missing", "eval nowhere --out res", r"nowhere: no such model folder"),
    Case("eval-no-out", "eval enc", r"field 'out': missing --out", copy("enc")),
    Case(
        "eval-out-holds-results",
        "eval enc --out res",
        r"res: field 'out': already holds evaluation results",
        lambda w, a: (copy("enc")(w, a), (w / "res").mkdir(), (w / "res" / "results.json").write_text("{}")),
    ),
    Case(
        "eval-unknown-task", "eval enc --tasks nosuch --out res", r"field 'tasks': unknown task 'nosuch'", copy("enc")
    ),
    Case("eval-unknown-suite", "eval enc --suite huge --out res", r"field 'suite': unknown suite 'huge'", copy("enc")),
    Case(
        "eval-unknown-pooling",
        "eval enc --pooling max --out res",
        r"field 'pooling': unknown pooling 'max'",
        copy("enc"),
    ),
    Case("eval-limit-zero", "eval enc --limit 0 --out res", r"field 'limit': limit 0 must be at least 1", copy("enc")),
    Case(
        "eval-truncated-weights",
        "eval enc --out res",
        r"enc/model.safetensors: is truncated or corrupt",
        chain(copy("enc"), truncate("enc/model.safetensors", 1000)),
    ),
    Case("compare-not-a-pair", "compare enc --out res", r"enc: is a single model, not a run of a pair", copy("enc")),
    Case("mteb-unknown-task", "mteb enc --task nosuch", r"field 'tasks': unknown task 'nosuch'", copy("enc")),
    # ---------------------------------------------------------------- an output path that is a file
    Case(
        "out-is-a-file-init",
        "init --size tiny --arch encoder --out corpus.txt",
        r"corpus.txt: exists and is not a directory",
        copy("corpus.txt"),
    ),
    Case(
        "out-is-a-file-tokenizer",
        "tokenizer train --corpus corpus.txt --vocab-size 300 --out corpus.txt",
        r"corpus.txt: exists and is not a directory",
        copy("corpus.txt"),
    ),
    Case(
        "out-is-a-file-prepare",
        "data prepare --source c=text:corpus.txt --tokenizer tok --out corpus.txt",
        r"corpus.txt: field '--out': is a file, not a folder",
        copy("tok", "corpus.txt"),
    ),
    Case(
        "out-is-a-file-train",
        "train r.yaml --out corpus.txt",
        r"corpus.txt: exists and is not an empty folder",
        chain(copy("corpus.txt"), edit_recipe(lambda r: None)),
    ),
    Case(
        "out-is-a-file-eval",
        "eval enc --out corpus.txt",
        r"corpus.txt: exists and is not a directory",
        copy("enc", "corpus.txt"),
    ),
    Case(
        "out-is-a-file-lm-eval-tasks", "lm-eval-tasks --out corpus.txt", r"corpus.txt: File exists", copy("corpus.txt")
    ),
    Case(
        "out-under-a-file",
        "lm-eval-tasks --out corpus.txt/tasks",
        r"corpus.txt/tasks: Not a directory",
        copy("corpus.txt"),
    ),
]


def edit_latest_state(change: Callable[[dict], object], arch: str = "encoder") -> Callable[[Path, Path], None]:
    def setup(work: Path, assets: Path) -> None:
        path = latest_state(work, arch) / "trainer_state.json"
        edit_json(str(path.relative_to(work)), change)(work, assets)

    return setup


def edit_latest_rng(change: Callable[[dict], None], arch: str = "encoder") -> Callable[[Path, Path], None]:
    def setup(work: Path, assets: Path) -> None:
        edit_weights(str((latest_state(work, arch) / "rng.safetensors").relative_to(work)), change)(work, assets)

    return setup


def edit_latest_optimizer(change: Callable[[dict], None], arch: str = "encoder") -> Callable[[Path, Path], None]:
    """The newest optimizer.pt of a model, read and rewritten by torch itself after `change`."""

    def setup(work: Path, assets: Path) -> None:
        import torch

        path = latest_state(work, arch) / "optimizer.pt"
        state = torch.load(path, map_location="cpu", weights_only=True)
        change(state)
        torch.save(state, path)

    return setup


def one_group(state: dict) -> None:
    first, second = state["param_groups"]
    first["params"] = first["params"] + second["params"]
    state["param_groups"] = [first]


def remove_order_parts(arch: str) -> Callable[[Path, Path], None]:
    def setup(work: Path, assets: Path) -> None:
        for part in (work / "run" / arch / "data_order").glob("part-*.parquet"):
            part.unlink()

    return setup


def two_phases(change: Callable[[dict], None]) -> Callable[[dict], None]:
    """The tiny recipe with a second phase (a copy of the first), then `change`d."""

    def edit(r: dict) -> None:
        first = r["phases"][0]
        r["phases"] = [copying.deepcopy(first) | {"name": "first"}, copying.deepcopy(first) | {"name": "second"}]
        change(r)

    return edit


# Issue 16 (reliability, second round): every check before the first write, state validated on read.
CASES += [
    Case(
        "train-resume-force-other-seed",
        "train --out run --resume --force --set seed=7",
        r"step3/trainer_state.json: field 'data_state': the saved data position belongs to other data",
        copy("run"),
    ),
    Case(
        "train-second-phase-min-tokens-above-chunk",
        "train r.yaml --out new",
        r"field 'phases.1.data.min_tokens': min_tokens 1000 exceeds the 30 tokens a chunk holds",
        edit_recipe(two_phases(lambda r: r["phases"][1]["data"].update(min_tokens=1000))),
    ),
    Case(
        "train-second-phase-damaged-shard",
        "train r.yaml --out new",
        r"data2/wiki.*tokens-00001.npy",
        chain(
            copy("data"),
            lambda work, assets: shutil.copytree(work / "data", work / "data2"),
            truncate("data2/wiki/tokens-00001.npy", 50),
            edit_recipe(two_phases(lambda r: r["phases"][1]["data"].update(dir="data2"))),
        ),
    ),
    Case(
        "prepare-source-named-dot",
        "data prepare --source .=text:corpus.txt --tokenizer tok --out d",
        r"source name '\.' is not a plain name",
        chain(copy("tok", "corpus.txt"), write("d/mine.txt", "the user's own file")),
    ),
    Case(
        "prepare-source-named-dotdot",
        "data prepare --source ..=text:corpus.txt --tokenizer tok --out d/sub",
        r"source name '\.\.' is not a plain name",
        chain(copy("tok", "corpus.txt"), write("d/mine.txt", "the user's own file")),
    ),
    Case(
        "prepare-source-hidden-name",
        "data prepare --source .c.partial=text:corpus.txt --tokenizer tok --out d",
        r"source name '\.c\.partial' is not a plain name",
        copy("tok", "corpus.txt"),
    ),
    Case(
        "prepare-onto-a-user-folder",
        "data prepare --source notes=text:corpus.txt --tokenizer tok --out d",
        r"d/notes: field '--source': holds something that is not a prepared source",
        chain(copy("tok", "corpus.txt"), write("d/notes/todo.txt", "the user's own notes")),
    ),
    Case(
        "train-resume-state-phase-out-of-range",
        "train --resume --out run",
        r"trainer_state.json: field 'phase': phase 5 \('pretrain'\) is not a phase of the recipe",
        chain(copy("run"), edit_latest_state(lambda t: t.update(phase=5))),
    ),
    Case(
        "train-resume-state-data-null",
        "train --resume --out run",
        r"trainer_state.json: field 'data': must be a JSON object, not None",
        chain(copy("run"), edit_latest_state(lambda t: t.update(data=None))),
    ),
    Case(
        "train-resume-state-data-not-a-position",
        "train --resume --out run",
        r"field 'data': the data position is not a data-stream state",
        chain(copy("run"), edit_latest_state(lambda t: t["data"].pop("stream") and None)),
    ),
    Case(
        "train-resume-state-counters",
        "train --resume --out run",
        r"field 'phase_tokens': the counters do not fit together",
        chain(copy("run"), edit_latest_state(lambda t: t.update(phase_tokens=t["tokens"] + 1))),
    ),
    Case(
        "train-resume-rng-missing-entries",
        "train --resume --out run",
        r"rng.safetensors.*rank0.*torch_cpu",
        chain(copy("run"), edit_latest_rng(lambda sd: sd.pop("rank0.torch_cpu"))),
    ),
    Case(  # a truncated .gz used to end in gzip's EOFError traceback
        "prepare-truncated-gzip",
        "data prepare --source j=jsonl:src --tokenizer tok --out d",
        r"^error: src/b.jsonl.gz: is not a complete gzip file \(Compressed file ended",
        chain(
            copy("tok"),
            write("src/a.jsonl", '{"text": "fine"}\n'),
            write("src/b.jsonl.gz", __import__("gzip").compress(b'{"text": "hello"}\n' * 200)[:40]),
        ),
    ),
    Case(  # found by the thorough hypothesis profile: str.splitlines() also breaks at \x1e
        "prepare-source-path-with-a-record-separator",
        "data prepare --source 0=text:\x1e0 --tokenizer tok --out d",
        r"^error: \\x1e0: field 'source': no such file or folder",
        copy("tok"),
    ),
    Case(
        "train-resume-optimizer-missing-entries",
        "train --resume --out run",
        r"encoder/checkpoints/step\d+/optimizer.pt: field 'state': has no state for 2 of the model's \d+ parameters "
        r"\(model.layers.0.attn.Wqkv.weight, model.final_norm.weight\); resuming would train them with fresh moments",
        chain(
            copy("run"),
            edit_latest_optimizer(
                lambda o: [o["state"].pop(n) for n in ("model.layers.0.attn.Wqkv.weight", "model.final_norm.weight")]
            ),
        ),
    ),
    Case(  # --force rewrites recipe.yaml: the optimizer check must come first (the table snapshots the run)
        "train-resume-force-changed-recipe-optimizer-missing-entries",
        "train --resume --force --out run --set checkpoint.keep_last=5",
        r"encoder/checkpoints/step\d+/optimizer.pt: field 'state': has no state for 1 of the model's \d+ parameters",
        chain(copy("run"), edit_latest_optimizer(lambda o: o["state"].pop("model.final_norm.weight"))),
    ),
    Case(  # the same for the rng file, read with the other state files
        "train-resume-force-changed-recipe-rng-missing-entries",
        "train --resume --force --out run --set checkpoint.keep_last=5",
        r"rng.safetensors.*rank0.*torch_cpu",
        chain(copy("run"), edit_latest_rng(lambda sd: sd.pop("rank0.torch_cpu"))),
    ),
    Case(
        "train-resume-optimizer-moment-missing",
        "train --resume --out run",
        r"optimizer.pt: field 'state.model.layers.0.attn.Wo.weight': the state of model.layers.0.attn.Wo.weight lacks exp_avg_sq",
        chain(
            copy("run"),
            edit_latest_optimizer(lambda o: o["state"]["model.layers.0.attn.Wo.weight"].pop("exp_avg_sq")),
        ),
    ),
    Case(
        "train-resume-optimizer-wrong-shape",
        "train --resume --out run",
        r"decoder/checkpoints/step\d+/optimizer.pt: field 'state.model.layers.0.attn.Wo.weight.exp_avg': exp_avg of "
        r"model.layers.0.attn.Wo.weight has shape \[4, 4\], the parameter \[\d+, \d+\]",
        chain(
            copy("run"),
            edit_latest_optimizer(
                lambda o: o["state"]["model.layers.0.attn.Wo.weight"].update(exp_avg=__import__("torch").zeros(4, 4)),
                arch="decoder",
            ),
        ),
    ),
    Case(
        "train-resume-optimizer-one-group",
        "train --resume --out run",
        r"optimizer.pt: field 'param_groups': has 1 parameter groups, the model's optimizer has 2",
        chain(copy("run"), edit_latest_optimizer(one_group)),
    ),
    Case(
        "train-resume-optimizer-group-lacks-a-parameter",
        "train --resume --out run",
        r"optimizer.pt: field 'param_groups.1.params': group 1 lacks 1 of the model's \d+ parameters of that group "
        r"\(model.final_norm.weight\)",
        chain(
            copy("run"),
            edit_latest_optimizer(lambda o: o["param_groups"][1]["params"].remove("model.final_norm.weight")),
        ),
    ),
    Case(
        "train-resume-optimizer-not-a-state",
        "train --resume --out run",
        r"optimizer.pt: field 'state': is not an optimizer state",
        chain(copy("run"), edit_latest_optimizer(lambda o: o.pop("state"))),
    ),
    Case(
        "train-resume-order-parts-deleted",
        "train --resume --out run",
        r"run/encoder/data_order: the data order does not cover the checkpoint.s \d+ steps: no data_order parts at all",
        chain(copy("run"), remove_order_parts("encoder")),
    ),
]


def theta_zero(config: dict) -> None:
    config["global_rope_theta"] = 0.0
    for params in config.get("rope_parameters", {}).values():
        params["rope_theta"] = 0.0


def sharded_weights(index: bytes) -> Callable[[Path, Path], None]:
    """The model's weights as one shard of a sharded checkpoint, with this index file."""

    def setup(work: Path, assets: Path) -> None:
        (work / "enc" / "model.safetensors").rename(work / "enc" / "model-00001-of-00001.safetensors")
        (work / "enc" / "model.safetensors.index.json").write_bytes(index)

    return setup


def shard_with_id_beyond_vocab(work: Path, assets: Path) -> None:
    import numpy as np

    shard = work / "data" / "wiki" / "tokens-00001.npy"
    tokens = np.load(shard)  # rewritten by numpy itself: same size, a valid .npy, one id out of range
    tokens[7] = 60000
    np.save(shard, tokens)


# Issue 16: numbers and sizes, recipe files, state files read with checks.
CASES += [
    Case(
        "train-count-1e400",
        "train r.yaml --out new",
        r"field 'phases.0.tokens': '1e400' is beyond any count",
        edit_recipe(lambda r: r["phases"][0].update(tokens="1e400")),
    ),
    Case(
        "train-count-inf",
        "train r.yaml --out new",
        r"field 'phases.0.tokens': inf is not a whole number",
        edit_recipe(lambda r: r["phases"][0].update(tokens=float("inf"))),
    ),
    Case(
        "train-count-beyond-int64",
        "train r.yaml --out new --set phases.0.tokens=99999999999999999999999",
        r"field 'phases.0.tokens': .* is beyond the largest count",
        edit_recipe(lambda r: None),
    ),
    Case(
        "train-seed-beyond-2-64",
        "train r.yaml --out new --set seed=18446744073709551617",
        r"field 'seed': 18446744073709551617 is beyond the 64-bit range",
        edit_recipe(lambda r: None),
    ),
    Case(
        "train-seed-negative",
        "train r.yaml --out new --set seed=-1",
        r"field 'seed': -1 is below the minimum 0",
        edit_recipe(lambda r: None),
    ),
    Case(
        "train-odd-head-dim",
        "train r.yaml --out new",
        r"field 'num_attention_heads': the head dimension .* = 33 is odd",
        edit_recipe(
            lambda r: r.update(
                model={"hidden_size": 66, "intermediate_size": 96, "num_hidden_layers": 4, "num_attention_heads": 2}
            )
        ),
    ),
    Case(
        "train-rope-theta-zero",
        "train r.yaml --out new --set phases.0.rope.global_theta=0",
        r"field 'phases.0.rope.global_theta': 0.0 must be greater than 0.0",
        edit_recipe(lambda r: None),
    ),
    Case(
        "export-config-rope-theta-zero",
        "export enc out",
        r"global_rope_theta must be a finite number above 0, got 0.0",
        chain(copy("enc"), edit_json("enc/config.json", theta_zero)),
    ),
    Case(
        "export-config-string-id",
        "export enc out",
        r"field 'pad_token_id': config.json: pad_token_id must be a token id \(an integer\), got '\[PAD\]'",
        chain(copy("enc"), edit_json("enc/config.json", lambda c: c.update(pad_token_id="[PAD]"))),
    ),
    Case(
        "init-vocab-beyond-limit",
        "init --size tiny --arch encoder --out m --vocab-size 10000000000",
        r"vocab_size 10000000000 is beyond what ettin builds",
    ),
    Case(
        "tok-train-vocab-1e9",
        "tokenizer train --corpus corpus.txt --vocab-size 1000000000 --out t",
        r"vocab size 1,000,000,000 is beyond what ettin trains",
        copy("corpus.txt"),
    ),
    Case(
        "prepare-workers-negative",
        "data prepare --source c=text:corpus.txt --tokenizer tok --out d --workers -3",
        r"field 'workers': -3 is not a whole number from 1",
        copy("tok", "corpus.txt"),
    ),
    Case(
        "train-mixture-weight-inf",
        "train r.yaml --out new",
        r"weight inf is not a finite number",
        edit_recipe(lambda r: r["phases"][0]["data"].update(mixture={"wiki": float("inf")})),
    ),
    Case(
        "train-mixture-weight-huge-int",
        "train r.yaml --out new --set phases.0.data.mixture.wiki=" + "9" * 400,
        r"field 'phases.0.data.mixture\[0\].weight': weight inf is not a finite number",
        edit_recipe(lambda r: None),
    ),
    Case(
        "train-recipe-duplicate-key",
        "train r2.yaml --out new",
        r"r2.yaml: is not valid YAML at line \d+: the key 'seed' appears twice",
        write("r2.yaml", "seed: 1\nseed: 2\nphases: []\n"),
    ),
    Case(
        "train-recipe-duplicate-nested-key",
        "train r2.yaml --out new",
        r"the key 'tokens' appears twice",
        write("r2.yaml", "phases:\n  - tokens: 100\n    tokens: 200\n"),
    ),
    Case(
        "train-set-duplicate-key",
        "train r.yaml --out new --set 'phases.0.data={mixture: {wiki: 1}, mixture: {wiki: 2}}'",
        r"the key 'mixture' appears twice",
        edit_recipe(lambda r: None),
    ),
    Case(
        "train-recipe-too-large",
        "train big.yaml --out new",
        r"big.yaml: is 2,097,\d+ bytes, more than a recipe can be",
        write("big.yaml", "# " + "x" * (2 << 20) + "\n"),
    ),
    Case(
        "inspect-manifest-wrong-type",
        "data inspect data/wiki",
        r"manifest.json: field 'tokens': must be a whole number >= 0, not \"many\"",
        chain(copy("data"), edit_json("data/wiki/manifest.json", lambda m: m.update(tokens="many"))),
    ),
    Case(
        "inspect-manifest-missing-key",
        "data inspect data/wiki",
        r"manifest.json: field 'shards.0.documents': missing",
        chain(copy("data"), edit_json("data/wiki/manifest.json", lambda m: m["shards"][0].pop("documents") and None)),
    ),
    Case(
        "inspect-manifest-file-outside",
        "data inspect data/wiki",
        r"field 'shards.0.tokens.file': must be a file name in this folder",
        chain(
            copy("data"),
            edit_json("data/wiki/manifest.json", lambda m: m["shards"][0]["tokens"].update(file="../../r.yaml")),
        ),
    ),
    Case(
        "export-weights-index-not-utf8",
        "export enc out",
        r"model.safetensors.index.json: is not UTF-8 text \(byte 0\)",
        chain(copy("enc"), sharded_weights(GARBAGE)),
    ),
    Case(
        "export-weights-index-map-not-a-mapping",
        "export enc out",
        r"model.safetensors.index.json: field 'weight_map': must map weight names to shard file names",
        chain(copy("enc"), sharded_weights(b'{"weight_map": 5}')),
    ),
    Case(
        "init-tokenizer-json-a-list",
        "init --size tiny --arch encoder --out m --tokenizer tok",
        r"tok: cannot be loaded as a tokenizer: invalid type: sequence",
        chain(copy("tok"), write("tok/tokenizer.json", "[1, 2]")),
    ),
    Case("eval-tasks-only-commas", "eval enc --tasks , --out o", r"field 'tasks': ',' names no task", copy("enc")),
    Case(
        "train-shard-id-beyond-vocab",
        "train r.yaml --out new",
        r"tokens-00001.npy: holds token id 60000, beyond the tokenizer's vocabulary",
        chain(copy("data"), shard_with_id_beyond_vocab, edit_recipe(lambda r: r.update(data_dir="data"))),
    ),
]


def _poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def nan_weights(*names: str) -> Callable[[dict], None]:
    """Set the named tensors (all floating ones when none is named) to NaN."""

    def change(sd: dict) -> None:
        for k, t in sd.items():
            if t.is_floating_point() and (not names or k in names):
                t.fill_(float("nan"))

    return change


# Issue 16: non-finite model outputs are an error, not a score; an eval tokenizer must fit the model.
CASES += [
    Case(
        "eval-weights-nan",
        "eval enc --tasks sst2 --limit 8 --out o",
        r"^error: enc: enc produced non-finite hidden states on a two-token probe, before any task "
        r"\(its weights or config are damaged",
        chain(copy("enc"), edit_weights("enc/model.safetensors", nan_weights())),
    ),
    Case(
        "eval-decoder-one-layer-nan",
        "eval dec --tasks lambada --limit 4 --out o",
        r"dec produced non-finite hidden states on a two-token probe",
        chain(copy("dec"), edit_weights("dec/model.safetensors", nan_weights("model.layers.0.attn.Wo.weight"))),
    ),
    Case(
        "mteb-weights-nan",
        "mteb enc --max-queries 4 --max-docs 8",
        r"enc produced non-finite hidden states on a two-token probe",
        chain(copy("enc"), edit_weights("enc/model.safetensors", nan_weights())),
    ),
    Case(
        "eval-tokenizer-special-ids-differ",
        "eval enc --tokenizer tok2 --tasks sst2 --out o",
        r"^error: tok2: does not fit enc/config.json: field 'unk_token_id': the tokenizer's special-token ids "
        r"differ from the model config's \(unk_token_id: tokenizer \d+, model 1019; cls_token_id",
        copy("enc", "tok2"),
    ),
    Case(
        "compare-tokenizer-special-ids-differ",
        "compare --encoder enc --decoder dec --tokenizer tok2 --tasks sst2 --out o",
        r"^error: tok2: does not fit enc/config.json: field 'unk_token_id'",
        copy("enc", "dec", "tok2"),
    ),
    Case(
        "mteb-tokenizer-special-ids-differ",
        "mteb enc --tokenizer tok2",
        r"^error: tok2: does not fit enc/config.json: field 'unk_token_id'",
        copy("enc", "tok2"),
    ),
]


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


def run_console_script(args: list[str], cwd: Path) -> tuple[int, str, str]:
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    proc = subprocess.run(
        [str(ETTIN_BIN), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL
    )
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


def test_an_error_is_one_line_whatever_line_break_its_input_holds():
    from ettin.errors import EttinError

    breaks = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    assert len(f"a{breaks}b".splitlines()) > 1
    text = str(EttinError(f"bad value a{breaks}b", path=f"dir{breaks}", field="f", fix=f"fix{breaks}"))
    assert text.splitlines() == [text]
    assert "\\x1e" in text and "\\u2028" in text and "\\n" in text


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
END_TO_END = [
    "unknown-command",
    "missing-option",
    "init-tokenizer-not-utf8",
    "export-weights-truncated",
    "export-pickle-weights",
    "tok-train-corpus-not-utf8",
    "inspect-pickled-shard",
    "train-recipe-python-tag",
    "train-resume-damaged-checkpoint",
]


@pytest.mark.parametrize("case_id", END_TO_END)
def test_bad_input_console_script(case_id: str, tmp_path, assets):
    case = next(c for c in CASES if c.id == case_id)
    work, before = prepare_case(case, tmp_path, assets)
    check_case(case, work, run_console_script(shlex.split(case.args), work), before)


def test_pair_verify_names_the_steps_a_deleted_order_no_longer_covers(tmp_path, assets, monkeypatch):
    """Both models' data-order parts deleted: the orders agree (both empty), and that proves nothing."""
    work, before = prepare_case(
        Case("x", "", "", chain(copy("run"), remove_order_parts("encoder"), remove_order_parts("decoder"))),
        tmp_path,
        assets,
    )
    monkeypatch.chdir(work)
    code, out, err = run_in_process(["pair", "verify", "run"])
    assert code == 1 and "Traceback" not in err, err
    assert "incomplete: encoder: the data order does not cover its checkpoints' 3 steps" in out, out
    assert "decoder: the data order does not cover" in out, out
    assert snapshot(work) == before


# ------------------------------------------------------------------ writes refused without an errno


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """A real partial write: the kernel stops every write past `nbytes` (RLIMIT_FSIZE, SIGXFSZ ignored),
    as a full disk does, but what the writers report has no ENOSPC: numpy raises OSError('N requested
    and M written') without an errno, torch's zip writer a RuntimeError, safetensors its own error."""
    import resource
    import signal

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_partial_numpy_write_during_prepare_is_one_line(tmp_path, assets, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(assets / "data", tmp_path / "d")  # what was there before must stay as it was
    before = snapshot(tmp_path / "d")
    (tmp_path / "big.txt").write_text("The quick brown fox jumps over the lazy dog.\n" * 3000, encoding="utf-8")
    with file_size_limit(20_000):
        code, _, err = run_in_process(
            ["data", "prepare", "--source", "big=text:big.txt", "--tokenizer", assets / "tok", "--out", "d"]
        )
    assert_one_line_error(code, err, "tokens-00000.npy: the write failed part way (", "requested and", "written)")
    assert "nothing half-written was left in place" in err
    assert not (tmp_path / "d" / "big").exists()
    after = snapshot(tmp_path / "d")
    assert {k: v for k, v in after.items() if not k.startswith(".big.partial")} == before


def test_torch_zip_writer_failing_during_a_checkpoint_is_one_line(tmp_path, assets, monkeypatch):
    monkeypatch.chdir(tmp_path)
    edit_recipe(lambda r: None)(tmp_path, assets)
    with file_size_limit(1_200_000):  # model.safetensors (~0.85 MB) fits, optimizer.pt (~1.7 MB) does not
        code, _, err = run_in_process(["train", "r.yaml", "--out", "run", "--no-progress", "--arch", "encoder"])
    assert_one_line_error(code, err, "run/encoder/checkpoints/step", "the write failed part way (", "inline_container")
    checkpoints = tmp_path / "run" / "encoder" / "checkpoints"
    assert not checkpoints.exists() or list(checkpoints.iterdir()) == []  # no tag, no staging folder left
    code, out, err = run_in_process(["train", "--resume", "--out", "run", "--no-progress"])
    assert code == 0, err


def test_write_failure_reads_only_writer_errors():
    from ettin.io import write_failure

    assert write_failure(OSError("10 requested and 3 written"), "p") is not None
    assert write_failure(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"))
    assert write_failure(OSError(2, "No such file or directory")) is None  # has an errno: mapped by the CLI
    assert write_failure(RuntimeError("shape mismatch")) is None  # a bug keeps its traceback
    assert write_failure(ValueError("requested and written")) is None


def test_a_model_beyond_the_machine_memory_is_refused_before_allocation(tmp_path, monkeypatch):
    """The estimate (parameters x 4 bytes) is compared with the machine's memory before any weight
    exists; the machine is told to have 1 GiB, and a 150m encoder with a 2M vocabulary needs ~6 GiB."""
    import ettin.config

    monkeypatch.setattr(ettin.config, "machine_memory_bytes", lambda: 1 << 30)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_in_process(
        ["init", "--size", "150m", "--arch", "encoder", "--out", "m", "--vocab-size", 2_000_000]
    )
    assert_one_line_error(code, err, "field 'vocab_size': the model would need", "GiB for its weights alone", "1.0 GiB")
    assert list(tmp_path.iterdir()) == []


def test_a_run_whose_every_update_was_skipped_resumes(tmp_path, assets, monkeypatch):
    """The control of the optimizer-state check: a checkpoint whose updates were all skipped (a
    gradient-norm limit no step meets) holds moments that never moved from zero, and that is no damage."""
    import torch

    from ettin.train import checkpoint as ck

    monkeypatch.chdir(tmp_path)
    limits = ["--set", "guards.max_grad_norm=1e-9", "--set", "guards.max_skips=1000"]
    code, out, err = run_in_process(["train", assets / "r.yaml", "--out", "run", "--no-progress", *limits])
    assert code == 0, err + out
    for arch in ("encoder", "decoder"):
        state = torch.load(ck.latest_full_state(tmp_path / "run" / arch) / "optimizer.pt", weights_only=True)
        assert state["state"] and all(not e["exp_avg"].any() for e in state["state"].values()), arch
    code, out, err = run_in_process(["train", "--resume", "--out", "run", "--no-progress"])
    assert code == 0, err + out
