"""CLI conventions every MEG command shares: flags from TOML and the environment (:mod:`.config`), logging
(:mod:`.logs`), one-line errors and exit codes (:mod:`.errors`)."""
