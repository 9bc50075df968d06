"""
The subcommands of `medimage-tx`, one module each (see L{medimage_tx.cli}).
"""
