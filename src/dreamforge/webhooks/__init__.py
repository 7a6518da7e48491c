"""Webhooks: signed, durable, retried notifications of job events."""
