"""Tokens outside the running server: the sealed token store, its keeper, the list of
revocations it has yet to record, and the dump format of `pizauth dump`/`restore`."""
