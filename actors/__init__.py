"""farmhand.actors."""
