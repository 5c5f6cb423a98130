"""Input: sources (what the examples are), views (how they are augmented), pipeline (batches)."""
