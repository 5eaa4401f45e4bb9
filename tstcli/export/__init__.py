"""Export run checkpoints to standard Hugging Face checkpoints."""
