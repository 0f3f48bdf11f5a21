"""The OpenBao fixtures of the integration tests, for the deployment tests that start OpenBao."""

from tests.integration.conftest import bao_binary, short_tmp

__all__ = ["bao_binary", "short_tmp"]
