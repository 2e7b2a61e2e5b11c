"""Selection: episode filters and near-duplicate removal."""
