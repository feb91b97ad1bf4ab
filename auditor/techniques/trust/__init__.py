"""How far to trust a saliency map: randomisation sanity check, map similarity, perturbation faithfulness
and localisation against object boxes, one module each."""
