"""
Makes C{twistd popsrv} available; the service module is imported only when
popsrv runs, not when twistd lists its plugins.
"""

from twisted.application.service import ServiceMaker

popsrv = ServiceMaker("popsrv", "popsrv.app.service", "A POP3 server for Maildirs (RFC 1939).", "popsrv")
