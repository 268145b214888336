"""saf_ref.experiments."""
