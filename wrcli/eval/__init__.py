"""Evaluations: the field's probes and correspondence benchmarks, several upsamplers side by side.

One module per protocol, each with a task behind one interface (:mod:`.task`: data reader, per-image features,
metric, report) that one runner executes: :mod:`.seg` and :mod:`.depth` (linear probes, :mod:`.probes`),
:mod:`.keypoints` (SPair-71k, pairs files) and :mod:`.stereo` (``wrc eval corr`` picks one,
:mod:`.correspondence`). Shared parts: :mod:`.datasets` (probe dataset readers), :mod:`.features` (the probes'
feature cache), :mod:`.dense` (normalised dense maps for matching), :mod:`.metrics`.
"""
