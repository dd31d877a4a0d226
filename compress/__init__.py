"""recdistill.compress."""
