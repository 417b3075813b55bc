"""Training: recipe -> paired models -> tagged checkpoints. See docs/training.md."""
