"""Running the user's commands: hooks and the notifier that queues them, the secret
and key commands, and the reaper every command runs under."""
