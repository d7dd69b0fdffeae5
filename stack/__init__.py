"""The all-in-one dev stack (`make run`): the only code that knows every component."""
