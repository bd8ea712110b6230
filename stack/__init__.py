"""The team stack on loopback (stack.py: make stack-up / stack-down)."""
