"""saf_ref.train."""
