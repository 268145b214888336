"""saf_ref.data."""
