"""`plasmaboot watch`: the fleet live in a terminal, from the store or a server's events."""
