"""The Shell group of API.md: commands and tests (shell.api.commands), SSH and suggest (shell.api.remote)."""

from shell.api import commands, remote

urlpatterns = [*commands.urlpatterns, *remote.urlpatterns]
