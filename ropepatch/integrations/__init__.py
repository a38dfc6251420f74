"""Integrations with applications that host runtimes (text-generation-webui)."""
