"""The smallest Pond service: the template services/README.md walks through, and the
test suite's proof of what the runtime's host gives every service."""
