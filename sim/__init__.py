"""farmhand.sim."""
