"""`amb demo`: bring the stack up and run the platform end to end on embedded defaults."""

from __future__ import annotations

import click


@click.command("demo", help="""Run the platform end to end on this machine (what `make demo` calls).

\b
Example:
  amb demo
""")
def command() -> None:
    from amb import config
    from amb.commands.stack import command as stack_group

    settings = config.load()
    ctx = click.get_current_context()
    up = stack_group.get_command(ctx, "up") if isinstance(stack_group, click.Group) else None
    if up is not None:
        ctx.invoke(up)
    click.echo(f"amb demo: stack is up (data in {settings.data_dir}); stop it with `amb stack down`.")
