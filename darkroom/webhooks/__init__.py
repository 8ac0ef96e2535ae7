"""Webhooks: endpoints and signing secrets, the outbox of deliveries and its log.

A job's move writes its deliveries in the move's own statement (`outbox`), so a delivery
exists exactly when the move committed; the delivery workers (`darkroom-webhooks`) take due
rows (`deliveries`), POST them signed (`signing`), and record every try.
"""
