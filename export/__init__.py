"""recdistill.export."""
