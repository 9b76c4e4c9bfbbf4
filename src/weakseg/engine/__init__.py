"""Engine: recipes, trainer, checkpoints, evaluation and inference."""
