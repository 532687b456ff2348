"""Where and how computation runs: device selection, a memory scope for CPU evaluation, the
one switch of the CPU fast paths (:mod:`metaacdc.runtime.fast_paths`), and the processes of
a ``torch.distributed`` job. Any layer may use it; it uses none of them."""
