"""Run the configured OS installer against a node and report how it went."""

from plasmaboot.install.runner import (
    DEFAULT_INSTALL_COMMAND,
    InstallResult,
    InstallRunner,
    render_argv,
    split_command,
)

__all__ = [
    "DEFAULT_INSTALL_COMMAND",
    "InstallResult",
    "InstallRunner",
    "render_argv",
    "split_command",
]
