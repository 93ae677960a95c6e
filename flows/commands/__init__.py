"""One module per `vetset` command; importing this package registers them all."""
from . import audit, poison, train, serve, purify, cache, methods  # noqa: F401  (registration)
from . import bench  # noqa: F401  (registration: vetset bench)
