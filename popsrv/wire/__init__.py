"""
What the protocol and the stores share about the wire: framing (CRLF,
dot-stuffing, wire sizes) and streaming (producers, backpressure); and what
comes before a POP3 connection's first octet behind a proxy, the PROXY
protocol's header (L{popsrv.wire.proxyheader}, L{popsrv.wire.proxied}).
"""
