"""The bench: the service against a bare Flask ceiling, driven by wrk (``make bench``)."""
