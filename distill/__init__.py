"""recdistill.distill."""
