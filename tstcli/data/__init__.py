"""What training reads: the prepared shards (`shards.py`: manifest, verify, memory maps), each phase's rows
(`packing.py`, `rows.py`, `order.py`), the deterministic row loader and the held-out rows (`loader.py`), and a
run's data opened for training and `tst eval` alike (`opener.py`). Free of torch; nothing here imports
`tstcli.prep` (the preparation that writes the shards)."""
