"""The data path: sources -> prepared token shards -> per-phase mixture stream -> varlen batches -> data order.

See docs/data.md. Built-in corpora: `ettin.data.sources.builtin_texts(name)` / `iter_texts(spec)`.
"""
