"""The task-generic training engine: state, optimizer, steps, parallel engines, checkpoints."""
