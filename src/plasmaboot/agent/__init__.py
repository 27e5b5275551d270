"""The installer agent: the node-side program the netboot installer image starts at boot.

It reads the server URL and the one-time boot token from the kernel command line, reads
the machine's hardware facts from sysfs and procfs, spends the token in the agent API's
lookup for a session token, and reports `installer-booted` with the facts (or `failed`
with the reason). See docs/agent.md.

Standard library only, on purpose: the installer image carries python3 and nothing
else, and copies just `plasmaboot/__init__.py` and this package into its initrd. Nothing
here may import another plasmaboot module or a third-party package
(tests/unit/test_agent_stdlib.py checks it).
"""
