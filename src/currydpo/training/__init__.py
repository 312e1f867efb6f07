"""Training: tokenisation of unique responses, log-probs, losses, the stage loop."""
