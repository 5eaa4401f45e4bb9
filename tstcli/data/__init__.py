"""Corpus sources, tokenizer, shards, per-phase packing and the deterministic row loader."""
