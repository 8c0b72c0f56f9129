"""The red-team suite: attacks from inside real sandboxes, faults, bad input and load."""
