"""farmhand.core."""
