"""The control plane: the signed desired-state protocol, the runtime that follows it, the operator side."""
