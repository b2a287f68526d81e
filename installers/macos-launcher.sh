#!/bin/sh
# The executable of LLaDA Studio.app: starts the installed app (install.sh fills in the path).
exec "@EXEC@" "$@"
