"""The Generator: an arq worker per GPU that runs the diffusers pipeline for a job."""
