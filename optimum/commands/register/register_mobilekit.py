"""`optimum-cli export mobilekit`: optimum loads every module in the optimum.commands.register
namespace and registers its REGISTER_COMMANDS (optimum 2.x, optimum/commands/optimum_cli.py),
as optimum-executorch registers `optimum-cli export executorch`. Kept light: optimum imports
it at every optimum-cli start, so the command's work is imported only when it runs."""

from optimum.commands.export.base import ExportCommand

from mobilekit.optimum_command import MobilekitExportCommand

REGISTER_COMMANDS = [(MobilekitExportCommand, ExportCommand)]
