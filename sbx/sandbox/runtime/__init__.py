"""Code that runs inside the gateway, agent and probe containers.

Standard library and dnslib only: this package is copied into the runtime image.
"""
