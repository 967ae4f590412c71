"""The command child: serves `pizauth` clients on the control socket."""
