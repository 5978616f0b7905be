"""The warning Gunicorn logs at start when the API is open beyond this machine.

It reads only the settings, so the Gunicorn master can call it without
importing the app.
"""

import ipaddress


def warning(config, addresses):
    """Return a warning when the API is open to more than this machine, else None.

    ``addresses`` are Gunicorn's parsed binds: ``(host, port)`` pairs, or a
    path for a unix socket, which exists for a proxy to publish.
    """
    if (
        config["SESSIONS_API_TOKENS"].strip()
        or config["SESSIONS_API_READONLY_TOKENS"].strip()
        or config.get("SESSIONS_API_TOKENS_FILE")
    ):
        return None
    exposed = [_describe(address) for address in addresses if not _loopback(address)]
    if not exposed:
        return None
    return (
        f"SESSIONS_API_TOKENS is not set and the service listens on {', '.join(exposed)}: "
        "anyone who can reach it can read and change every session."
    )


def _loopback(address):
    if not isinstance(address, tuple):
        return False
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe(address):
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return f"unix:{address}"
