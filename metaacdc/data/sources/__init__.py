"""Image sources turned into caches by ``prepare``: miniImageNet, Omniglot, synthetic."""
