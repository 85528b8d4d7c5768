"""The model: training, the compiled scorer, the promotion rule, MLflow tracking and registry, the BentoML import."""
