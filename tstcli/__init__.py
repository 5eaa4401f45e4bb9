"""tst: pretrain language models with Token Superposition Training."""

__version__ = "0.1.0"
