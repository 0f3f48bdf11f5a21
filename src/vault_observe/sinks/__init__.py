"""Span senders. Each sink runs on its own worker thread behind its own bounded queue."""
