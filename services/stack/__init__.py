"""The local stack: everything Darkroom needs on one machine, for a demo or manual use."""
