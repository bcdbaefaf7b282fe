"""The pre-fork server: master (arbiter), workers, listening sockets, control socket."""
