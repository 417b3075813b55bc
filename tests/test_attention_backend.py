"""Which attention backend runs where, and what asking for one that cannot run says."""

from __future__ import annotations

import pytest
import torch

from ettin import attention
from ettin.errors import EttinError


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv(attention.ENV, raising=False)
    attention._flash_attn.cache_clear()
    yield
    attention._flash_attn.cache_clear()


def test_cpu_and_fp32_run_sdpa_whatever_is_installed():
    assert attention.backend_for("cpu", torch.bfloat16) == "sdpa"
    assert attention.backend_for("cuda", torch.float32) == "sdpa"  # no half precision: no flash kernel


def test_cuda_half_takes_torch_varlen_when_this_torch_has_it():
    has_native = attention._torch_varlen() is not None
    assert attention.backend_for("cuda", torch.bfloat16) == ("torch-varlen" if has_native else "sdpa")


def test_windows_follow_the_spec():
    assert attention.window_size(64, causal=False) == (64, 64)  # |i - j| <= 64
    assert attention.window_size(64, causal=True) == (63, 0)  # i - 64 < j <= i: 64 keys with itself
    assert attention.window_size(None, causal=True) == (-1, 0)
    assert attention.window_size(None, causal=False) == (-1, -1)


def test_an_unknown_backend_names_the_variable(monkeypatch):
    monkeypatch.setenv(attention.ENV, "fast")
    with pytest.raises(EttinError, match="ETTIN_ATTENTION='fast' is not a backend"):
        attention.backend_for("cpu", torch.float32)


def test_sdpa_can_be_forced(monkeypatch):
    monkeypatch.setenv(attention.ENV, "sdpa")
    assert attention.backend_for("cuda", torch.bfloat16) == "sdpa"


def test_asking_for_missing_flash_attn_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setenv(attention.ENV, "flash-attn")
    monkeypatch.setitem(__import__("sys").modules, "flash_attn", None)  # import flash_attn raises ImportError
    with pytest.raises(EttinError, match="flash-attn"):
        attention.backend_for("cuda", torch.bfloat16)


def test_a_broken_flash_attn_install_is_reported(monkeypatch, tmp_path):
    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text("import flash_attn_2_cuda_missing_extension\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "flash_attn", raising=False)
    monkeypatch.setenv(attention.ENV, "flash-attn")
    with pytest.raises(EttinError, match="installed but cannot be imported.*flash_attn_2_cuda_missing_extension"):
        attention.backend_for("cuda", torch.bfloat16)


def test_torch_varlen_asked_for_on_cpu_says_why(monkeypatch):
    monkeypatch.setenv(attention.ENV, "torch-varlen")
    with pytest.raises(EttinError, match="torch-varlen cannot run here"):
        attention.backend_for("cpu", torch.bfloat16)


def test_cpu_attention_is_unchanged_by_the_setting(monkeypatch):
    q, k, v = (torch.randn(100, 2, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    seqs = attention.Varlen.from_lengths([60, 40])
    ref = attention.varlen_attention(q, k, v, seqs, causal=True, half_window=16, scale=8**-0.5)
    monkeypatch.setenv(attention.ENV, "sdpa")
    torch.testing.assert_close(
        attention.varlen_attention(q, k, v, seqs, causal=True, half_window=16, scale=8**-0.5), ref
    )
