"""The sandbox layer: one step in isolation on a Docker engine.

Kept import-free: `policy` and `runtime` are copied into the gateway/agent
image and must import without docker or pydantic.
"""
