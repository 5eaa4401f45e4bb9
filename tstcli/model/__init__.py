"""Plain Llama-style decoder. Knows nothing about TST."""
from tstcli.model.llama import Llama

__all__ = ["Llama"]
