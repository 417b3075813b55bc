"""The wheel works outside a checkout: built from this tree, installed apart, run from an empty folder.

No download: the wheel is built without build isolation (the venv's setuptools) and installed with
`pip install --no-deps --no-index --target SITE`; the commands then run with `PYTHONPATH=SITE` on the
venv's interpreter, so they see the installed ettin first and reuse the venv's torch, transformers and
the rest. The checkout's source folder is kept off the path, and the test checks that the ettin that
ran is the installed one.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ettin.recipe import shipped_recipes

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """(site folder with the installed wheel, environment that runs it)."""
    root = tmp_path_factory.mktemp("wheel")
    tree = root / "tree"  # a copy, so the build leaves no build/ or egg-info in the checkout
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_INDEX_URL")}
    env["PIP_NO_INDEX"] = "1"
    dist = root / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(tree)],
        root,
        env,
    )
    wheels = list(dist.glob("ettin-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as z:
        names = set(z.namelist())
    for recipe in shipped_recipes():
        assert f"ettin/recipes/{recipe}.yaml" in names, f"{recipe} is not in the wheel"
    assert "ettin/bench/data_path.py" in names
    site = root / "site"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            "--target",
            str(site),
            str(wheels[0]),
        ],
        root,
        env,
    )
    env["PYTHONPATH"] = str(site)
    return site, env


def _ettin(site: Path) -> list[str]:
    script = site / "bin" / "ettin"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ettin"]


def test_installed_wheel_runs_from_an_empty_folder(installed, tmp_path, small_tokenizer_dir):
    site, env = installed
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    where = _run([sys.executable, "-c", "import ettin; print(ettin.__file__)"], empty, env).stdout.strip()
    assert Path(where).is_relative_to(site), where

    sizes = _run([*_ettin(site), "sizes", "--json"], empty, env).stdout
    assert "17m" in {row["size"] for row in json.loads(sizes)["sizes"]}

    listing = _run([*_ettin(site), "recipes"], empty, env).stdout
    for name in ("demo", "ettin-17m", "ettin-1b"):
        assert any(line.startswith(name + " ") for line in listing.splitlines()), listing
    shown = _run([*_ettin(site), "recipes", "show", "ettin-17m"], empty, env).stdout
    assert "name: ettin-17m" in shown

    # a few steps of the shipped demo recipe, on a small corpus prepared here (no download, no checkout)
    from ettin.data.prepare import prepare
    from ettin.data.sources import builtin_texts

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, texts in (
        ("wiki", itertools.islice(builtin_texts("wiki"), 120)),
        ("shakespeare", itertools.islice(builtin_texts("shakespeare"), 2)),
    ):
        with open(corpus / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for text in texts:
                f.write(json.dumps({"text": text[:20_000]}) + "\n")
    data = tmp_path / "data"
    prepare([f"{n}=jsonl:{corpus / (n + '.jsonl')}" for n in ("wiki", "shakespeare")], small_tokenizer_dir, data)
    sets = [
        f"tokenizer={small_tokenizer_dir}",
        f"data_dir={data}",
        "prepare.tokenizer=null",
        "prepare.sources=[]",
        "model.size=tiny",
        "micro_batch_size=4",
        "checkpoint.every_tokens=100K",
    ]
    for i, tokens in enumerate((600, 300, 300)):
        sets += [f"phases.{i}.tokens={tokens}", f"phases.{i}.seq_len=64", f"phases.{i}.batch_size=4"]
    sets += ["phases.0.batch_warmup_tokens=0", "phases.0.lr.warmup_tokens=100", "eval.data={}"]
    args = [*_ettin(site), "train", "demo", "--out", "run", "--no-progress", "--threads", "1"]
    for s in sets:
        args += ["--set", s]
    out = _run(args, empty, env).stdout
    assert "finished at step" in out, out
    assert (empty / "run" / "encoder").is_dir() and (empty / "run" / "decoder").is_dir()
    assert not (empty / "recipes").exists()
