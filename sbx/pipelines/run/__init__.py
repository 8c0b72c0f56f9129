"""Running specs: the orchestration of `sbx run` (`runner`), the step executor and its
scheduler (`executor`), the event log and run records (`records`) and evidence assembly
and signing (`evidence`)."""
