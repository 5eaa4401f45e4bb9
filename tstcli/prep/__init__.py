"""Offline preparation, `tst prepare`: sources and readers, the tokenizer, work units tokenized into shards
(`shard_writer.py`) and merged into a manifest, tokens users already have, the hub, the data directory's name
(`location.py`) and the runs it must not be replaced under (`dependents.py`)."""
