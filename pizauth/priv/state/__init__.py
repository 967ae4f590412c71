"""What the parent holds: the token table and its state machine, the locked secret
arena, the clock, failures and the pending login's request."""
