"""
The application: command-line options, the twistd service, worker
processes, listeners and the demo.
"""

from popsrv.app.service import ListeningService, Options, makeService

__all__ = ["ListeningService", "Options", "makeService"]
