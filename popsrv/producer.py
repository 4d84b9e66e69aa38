"""
Deprecated: moved to L{popsrv.wire.streaming}; this path works until the release after 0.2.0.
"""

from popsrv._deprecation import aliasMoved

aliasMoved(__name__, "popsrv.wire.streaming", ["CHUNK_SIZE", "FileProducer", "sendFile"])
