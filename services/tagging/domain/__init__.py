"""The tagging service's rules: columnar (numpy) and bitmap computations, no I/O."""
