"""Darkroom: text-to-image generation as asynchronous jobs behind a gRPC contract.

This package is the shared core that every Darkroom process imports: settings, the job
table and its state machine, validation, errors, auth, the queue, the event schema and
the gRPC server bootstrap. The generated contract lives in `darkroom.v1`.
"""
