"""Masks, prune-and-regrow rules and the DST methods on a model."""
