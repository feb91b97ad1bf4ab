"""What auditor does to a torch module, each in one place: hooks (the only place they are registered), putting
the model back as it was given, input memory format, BatchNorm folding, layer names and output grids, and
the per-call record of one forward pass."""
