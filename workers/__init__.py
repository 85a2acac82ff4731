"""farmhand.workers."""
