"""saf_ref.nn."""
