"""`python -m services.gateway`: serve the gateway."""

from services.gateway.settings import GatewaySettings
from shared.server import serve

serve("services.gateway.app:app", "gateway", GatewaySettings())
