"""`python -m services.analytics`: serve the analytics service."""

from services.analytics.settings import AnalyticsSettings
from shared.server import serve

serve("services.analytics.app:app", "analytics", AnalyticsSettings())
