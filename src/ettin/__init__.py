"""ettin: paired ModernBERT encoders and decoders, trained the Ettin way.

`import ettin` stays cheap (no torch, no transformers): the model and the loader come in on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ettin.config import ModelConfig

if TYPE_CHECKING:
    from ettin.model import EttinModel

__all__ = ["EttinModel", "ModelConfig", "load"]
__version__ = "0.1.0"


def load(path, revision: str | None = None, *, arch: str | None = None, dtype=None) -> "EttinModel":
    """An EttinModel from a modernbert / modernbert-decoder folder, a training run (`revision` picks the
    checkpoint) or a hub id; see `ettin.hf.load`."""
    from ettin.hf import load as _load

    return _load(path, revision, arch=arch, dtype=dtype)


def __getattr__(name: str):
    if name == "EttinModel":
        from ettin.model import EttinModel

        return EttinModel
    raise AttributeError(f"module 'ettin' has no attribute {name!r}")
