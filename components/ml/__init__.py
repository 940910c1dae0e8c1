"""Machine learning: networks, losses, the Lightning task, inference and scoring."""
