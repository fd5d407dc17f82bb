"""Evaluations: the field's probes (segmentation, depth) and correspondence, several upsamplers side by side."""
