"""The run package: what a run directory holds and how it is read and written — its layout and start-up checks
(`rundir`), checkpoints (`checkpoint`), the metrics log (`metrics`) and loading a model from a run or an export
(`load`). `train`, `resume`, `eval`, `export` and `compare` all go through it; it imports nothing from them."""
