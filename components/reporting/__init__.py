"""What people look at: evaluation figures and the self-contained HTML report."""
