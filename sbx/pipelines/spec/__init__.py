"""What a user writes: YAML loading with positions, the step spec, the pipeline spec and the
release policy, each validated with a one-line error naming the file, the field and the fix."""
