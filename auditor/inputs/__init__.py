"""What an audit reads: the model (and its preprocessing and class names) and the images."""
