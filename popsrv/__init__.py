"""
popsrv: a POP3 server framework on Twisted.

Run it with C{twistd -n popsrv}; embed it with L{popsrv.protocol.POP3Factory}
and a twisted.cred portal whose realm yields L{popsrv.interfaces.IMaildrop}
avatars; test a backend or an embedding with L{popsrv.testing}.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
