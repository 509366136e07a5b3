"""The example service: configuration and request handlers."""
