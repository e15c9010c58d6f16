"""`python -m services.chat`: serve the chat service."""

from services.chat.settings import ChatSettings
from shared.server import serve

serve("services.chat.app:app", "chat", ChatSettings())
