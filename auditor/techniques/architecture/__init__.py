"""The architecture technique's computations: the layer table, the data-flow graph, its drawing as SVG and
the TensorBoard export."""
