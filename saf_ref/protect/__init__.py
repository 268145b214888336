"""saf_ref.protect."""
