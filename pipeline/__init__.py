"""K-fold ensemble pipeline for text-classification competitions."""
