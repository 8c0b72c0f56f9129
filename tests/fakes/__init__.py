"""In-process fakes of external services, for tests that must not leave this machine."""
