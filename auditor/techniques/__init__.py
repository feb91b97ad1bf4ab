"""The computations behind the report, as pure functions: one module per technique family.

Each function takes a model and inputs and returns tensors or arrays, leaving the model exactly as
it found it; the Technique wrappers in auditor.sections turn the results into report sections.
"""
