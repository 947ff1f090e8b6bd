"""JSON Schemas shipped with the gateway (package data)."""
