"""One module per `vetset` command; importing this package registers them all."""
from . import audit, poison, train, purify  # noqa: F401  (registration)
