"""What is read off finished runs and models: depth curves and the grid that trains them,
the model table, per-model summaries, and GPU cost estimates."""
