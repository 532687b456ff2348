"""Image sources turned into caches by ``prepare``: miniImageNet, Omniglot, synthetic, and the
other few-shot benchmarks (CIFAR-FS, FC100, CUB-200-2011, tieredImageNet; :mod:`.benchmarks`)."""
