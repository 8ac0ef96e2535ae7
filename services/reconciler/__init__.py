"""The reconciler: makes Redis a cache of the job rows, whatever Redis or workers lost."""
