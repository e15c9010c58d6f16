"""Code the platform's services truly share: settings, DB setup, JWT checks, the envelope,
observability.
"""
