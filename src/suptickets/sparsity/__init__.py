"""Masks, prune-and-regrow rules and the DST methods on a model."""

# The buffer a mask lives in beside the weight it masks (`<module>.weight_mask`): the engine attaches
# it; a model file stores it as `mask.<module>.weight` (artifacts.py).
MASK_BUFFER = "weight_mask"
