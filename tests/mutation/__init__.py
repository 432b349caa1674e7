"""What `make mutate` needs besides the unit tests: the equivalent mutants' list and a pytest plugin."""
