"""Built-in techniques: one module per family, each pure functions plus one Technique wrapper."""
