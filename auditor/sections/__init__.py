"""Built-in report sections: each a thin Technique wrapper over pure functions in auditor.techniques.

These modules import torch only inside `run`, so `auditor run --help` can read every technique's
declared options at once.
"""
