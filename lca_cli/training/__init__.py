"""What training loops use: the checkpoint writer, the small training loop, framework integrations, the zoo."""
