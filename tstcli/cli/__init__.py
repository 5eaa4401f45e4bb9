"""The command line: one thin file per verb; `app.main` maps errors to exit codes."""
