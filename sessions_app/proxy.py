"""Trust the proxy in front (nginx) for the client's address and scheme, when told to."""

from werkzeug.middleware.proxy_fix import ProxyFix


def init_app(app):
    """Read ``X-Forwarded-For`` and ``-Proto`` from ``TRUST_PROXY`` hops, none by default.

    Trusting a hop that is not there would let any client choose the address
    the service logs for it, so the default trusts nothing.
    """
    hops = app.config["TRUST_PROXY"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
