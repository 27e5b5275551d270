"""`plasmaboot serve`: the provisioning server."""
