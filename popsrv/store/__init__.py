"""
Storage backends: implementations of L{popsrv.interfaces.IMaildrop}.

    - L{popsrv.store.maildir}: Maildir on disk, for production;
    - L{popsrv.store.memory}: messages in memory, for embedding and tests.
"""
