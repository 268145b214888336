"""saf_ref.bits: bit-exact number formats and fault models. Knows nothing of networks."""
