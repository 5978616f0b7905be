"""Session API: create, find, steer and message AI-agent sessions.

Importing the package loads nothing else: ``sessions_app.client`` (and the
``sessions`` command) must run where Flask and peewee are not imported.
"""


def create_app(mapping=None):
    """Build the app: defaults, then the environment, then ``mapping``."""
    from .factory import create_app as build

    return build(mapping)
