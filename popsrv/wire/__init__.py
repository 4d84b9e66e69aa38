"""
What the protocol and the stores share about the wire: framing (CRLF,
dot-stuffing, wire sizes) and streaming (producers, backpressure).
"""
