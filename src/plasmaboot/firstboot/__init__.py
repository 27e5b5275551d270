"""Node-side first-boot agent: validate cluster-config.json, bootstrap or join, markers."""
