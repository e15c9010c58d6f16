"""The platform's services; each is its own process and imports none of the others' internals."""
