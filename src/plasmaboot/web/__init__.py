"""HTTP: iPXE scripts, boot assets, agent and admin APIs, health and metrics."""
