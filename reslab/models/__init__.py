"""Model families. Each takes a connection spec and nothing else about wiring."""
