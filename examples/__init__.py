"""Example models and data for Fitstream, on datasets that scikit-learn ships (no downloads)."""
