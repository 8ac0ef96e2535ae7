"""Darkroom's processes: the Jobs service, the Generator worker and the Events service."""
