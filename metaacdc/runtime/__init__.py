"""Where and how computation runs: device selection, a memory scope for CPU evaluation, and
the processes of a ``torch.distributed`` job. Any layer may use it; it uses none of them."""
