"""Computing a store: the plan, the pair engine, the runner, torchrun, follow and prune, thread tuning."""
