"""Pure numerics: quadrature, one pair to an LCA row, accuracy, the objective, parameter layout, columns."""
