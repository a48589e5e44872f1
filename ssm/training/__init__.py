"""Training: Procrustes alignment, PCA (exact / streamed / GPU), pruning, evaluation."""
