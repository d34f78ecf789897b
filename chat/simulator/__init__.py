"""A built-in Coze simulator: a small HTTP server speaking Coze's Open API wire format.

Used in demo mode (no Coze token), by the tests and by the streaming benchmark. It has no
Django imports and runs standalone::

    python -m chat.simulator --port 8765 --token-delay-ms 20

or in process::

    with SimulatorServer(SimulatorConfig(token_delay_ms=5)) as server:
        coze = cozepy.Coze(auth=cozepy.TokenAuth("any"), base_url=server.base_url)

Endpoints, deterministic answers and the ``[sim:…]`` fault directives are described in
:mod:`chat.simulator.app`.
"""

from .app import SimulatorConfig, create_app
from .server import SimulatorServer

__all__ = ["SimulatorConfig", "SimulatorServer", "create_app"]
