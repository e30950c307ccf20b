"""One module per `amb` subcommand (or subcommand group), each registered explicitly in amb.cli."""
