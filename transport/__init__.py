"""farmhand.transport."""
