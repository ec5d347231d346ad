"""The network: masks, rewiring and initial weights (topology), and its variables and energy."""
