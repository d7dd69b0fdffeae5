"""The community service's rules: plain data and functions, no I/O."""
