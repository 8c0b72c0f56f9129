"""Every HTTP request checked: the gateway's request checker and TLS inspection.

Modules: `framing` (refuses request heads parsers could read two ways), `judge` (the
verdict on one request: Host, URI authority, method, path), `exchange` (one connection,
sans-IO, on h11: keep-alive and pipelined requests each read, judged and re-framed),
`relay` (the socket loop feeding an exchange, TLS over memory BIOs), `tls` (the per-step
CA, leaves minted per name, upstream verification), `tunnel` (what the proxy calls for
an allowed connection).
"""
