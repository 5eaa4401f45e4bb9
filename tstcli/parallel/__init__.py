"""Parallelism, applied from outside the model: the job's world and its collectives (`world`), and the engine that
wraps the training objective with activation checkpointing, torch.compile and DDP / FSDP2 (`engine`)."""
