"""Everything MLflow: index versions now; models, datasets, evaluations and aliases later."""
