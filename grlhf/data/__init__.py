"""Data: processors, preference / prompt / score datasets, the synthetic task, batching."""
