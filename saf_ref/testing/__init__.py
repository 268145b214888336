"""saf_ref.testing."""
